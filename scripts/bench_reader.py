"""Reader throughput: specstream's Ray Data source vs ray.data.read_webdataset vs a
single-process webdataset loop, on the same shards, in one run; printed as ratios.

All three deliver the same raw sample bytes (audio, cls, json) to the driver without
decoding audio. Ray is started once before timing (its ~3 s start-up is not counted);
each Ray measurement includes the dataset's own execution start. Medians of --reps runs.

    python ../shared/bench/make_corpus.py /tmp/corpus 20 500   # reference corpus
    python scripts/bench_reader.py /tmp/corpus --reps 3
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time


def wds_loop(urls):
    import webdataset as wds

    n = 0
    for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        n += 1
    return n


def ours_ray(urls):
    import ray

    from specstream.io.samples import ReaderOptions
    from specstream.pipeline.datasource import ShardDatasource

    ds = ray.data.read_datasource(ShardDatasource.over(urls, options=ReaderOptions()),
                                  override_num_blocks=len(urls))
    return sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))


def ours_inprocess(urls):
    from specstream.io.samples import read_shard

    return sum(t.num_rows for u in urls for t, _, _ in read_shard(u) if t is not None)


def ray_read_webdataset(urls):
    """Ray's reader with its defaults (decodes cls/json, leaves audio bytes)."""
    import ray

    ds = ray.data.read_webdataset(urls)
    return sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))


def make_ray_ceiling(urls):
    """Ray Data transport alone: the same rows and bytes per shard, built in memory by a
    trivial datasource (no file I/O, no tar parsing). No Ray reader can beat it here."""
    import pyarrow as pa
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    from specstream.io.samples import read_shard

    tables = [t for t, _, _ in read_shard(urls[0]) if t is not None]
    shard = pa.concat_tables(tables).combine_chunks()
    block_rows = tables[0].num_rows

    class InMemory(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            def fn():
                for start in range(0, shard.num_rows, block_rows):
                    yield shard.slice(start, block_rows)
            return [ReadTask(fn, BlockMetadata(None, None, None, None)) for _ in urls]

    def ray_ceiling(urls):
        import ray

        ds = ray.data.read_datasource(InMemory(), override_num_blocks=len(urls))
        return sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))

    return ray_ceiling


def measure(fn, urls, reps):
    rates, n = [], None
    for _ in range(reps):
        t = time.perf_counter()
        n = fn(urls)
        rates.append(n / (time.perf_counter() - t))
    return n, statistics.median(rates), rates


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", help="folder of shard-*.tar (make_corpus.py OUT 20 500)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--skip-read-webdataset", action="store_true", help="skip the slow baseline")
    args = p.parse_args(argv)
    urls = sorted(glob.glob(os.path.join(args.corpus, "*.tar")))
    if not urls:
        print(f"no shards in {args.corpus}", file=sys.stderr)
        return 2

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"{len(urls)} shards, {os.cpu_count()} CPUs, Ray {ray.__version__}, {args.reps} reps (median)")
    results = {}
    runs = [("webdataset single-process loop", wds_loop), ("specstream reader, in process", ours_inprocess),
            ("specstream ShardDatasource (Ray)", ours_ray),
            ("Ray transport ceiling (in-memory rows)", make_ray_ceiling(urls))]
    if not args.skip_read_webdataset:
        runs.append(("ray.data.read_webdataset", ray_read_webdataset))
    for name, fn in runs:
        n, med, rates = measure(fn, urls, args.reps)
        results[name] = med
        print(f"{name:36s} {n:6d} samples  median {med:9.0f} samples/s  "
              f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")
    ours = results["specstream ShardDatasource (Ray)"]
    print(f"ratio ours(Ray) / Ray transport ceiling  : {ours / results['Ray transport ceiling (in-memory rows)']:.2f}x")
    print(f"ratio ours(Ray) / webdataset loop       : {ours / results['webdataset single-process loop']:.2f}x"
          "  (target >= 1.0x)")
    if "ray.data.read_webdataset" in results:
        print(f"ratio ours(Ray) / ray.data.read_webdataset: {ours / results['ray.data.read_webdataset']:.1f}x"
              "  (target >= 10x)")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
