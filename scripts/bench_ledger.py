"""How many read records one ledger actor serves, and the cluster throughput that would saturate it.

    python scripts/bench_ledger.py --clients 4 --records 2000

Every read task records each chunk it emits (``source.block_rows`` samples, 256 by default)
in the run's one ledger actor. This measures, in one run on a local Ray cluster:

1. one call per record, each waiting for the previous (the read task's path before
   ``LedgerClient``): calls/s and records/s the ledger served;
2. ``LedgerClient`` (records batched, one call in flight): records/s;
3. the memory of a ledger actor's process, and of one that imports the pipeline's build
   module (torch and the augmentation library), as ledgers did before the package was lazy.

``--clients`` read tasks send ``--records`` records each at once, as fast as they can
(nothing else runs), so the figure is the ledger's ceiling on this machine. The records
are the reader's own: a read id, the shard url, chunk, samples, no quarantine entries.
The printed saturation point is records/s x block_rows samples/s: the cluster throughput
at which the ledger would be the bottleneck. Medians over ``--repeats``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--records", type=int, default=2000, help="records per client")
    p.add_argument("--block-rows", type=int, default=256, help="samples per record (source.block_rows)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from specstream.pipeline.ledger import Ledger, LedgerClient

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    shards = [f"s3://bucket/train/shard-{i:06d}.tar" for i in range(args.clients)]

    @ray.remote(num_cpus=0)
    def one_by_one(ledger, c: int, n: int) -> int:
        pending = None
        for i in range(n):
            if pending is not None:
                ray.get(pending)
            pending = ledger.record_read.remote(f"0/{c}/1", shards[c], i, args.block_rows, [], False, 0, None)
        ray.get(pending)
        return n

    @ray.remote(num_cpus=0)
    def batched(ledger, c: int, n: int) -> int:
        client = LedgerClient(ledger)
        for i in range(n):
            client.record(f"0/{c}/1", shards[c], i, args.block_rows, [], False, 0, None)
        client.flush()
        return client.calls

    def served(fn) -> tuple:
        ledger = Ledger.remote(shards, [None] * len(shards))
        ray.get(ledger.fingerprint.remote())  # started
        t0 = time.perf_counter()
        calls = sum(ray.get([fn.remote(ledger, c, args.records) for c in range(args.clients)]))
        dt = time.perf_counter() - t0
        report = ray.get(ledger.report.remote())
        assert report["totals"]["read"] == args.clients * args.records * args.block_rows  # every record arrived
        ray.kill(ledger)
        return args.clients * args.records / dt, calls / dt

    def rss_mb(heavy: bool) -> float:
        import psutil

        def probe(self, heavy):
            import os
            if heavy:
                import importlib

                importlib.import_module("specstream.pipeline.build")  # the import is the measurement
            return os.getpid()

        ledger = Ledger.remote(shards, [None] * len(shards))
        pid = ray.get(ledger.__ray_call__.remote(probe, heavy))
        rss = psutil.Process(pid).memory_info().rss / 2**20
        ray.kill(ledger)
        return rss

    single, batch = [], []
    for _ in range(args.repeats):
        single.append(served(one_by_one))
        batch.append(served(batched))
    records_1 = statistics.median(r for r, _ in single)
    calls_1 = statistics.median(c for _, c in single)
    records_b = statistics.median(r for r, _ in batch)
    calls_b = statistics.median(c for _, c in batch)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    print(f"one ledger actor, {args.clients} read tasks x {args.records} records, {cpus} CPUs, "
          f"median of {args.repeats}")
    print(f"  one call per record (waiting for the last): {calls_1:9.0f} calls/s  {records_1:9.0f} records/s")
    print(f"  LedgerClient (batched, one call in flight):  {calls_b:9.0f} calls/s  {records_b:9.0f} records/s  "
          f"({records_b / records_1:.1f}x)")
    print(f"  saturation at {args.block_rows} samples per record: one by one {records_1 * args.block_rows:,.0f} "
          f"samples/s, batched {records_b * args.block_rows:,.0f} samples/s")
    print(f"  ledger actor process: {rss_mb(False):.0f} MB RSS; the same after importing what the pipeline's "
          f"build module imports (torch, augmentation), as every ledger did before the lazy package: "
          f"{rss_mb(True):.0f} MB")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
