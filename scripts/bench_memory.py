"""Bounded memory: stream 1x and 10x the reference corpus through the whole pipeline and
report the peak memory of the Ray processes (and the driver) while it runs.

The 10x run lists every shard ten times under new names (symlinks in a temporary folder),
so it is 10x the samples and shards, not the same shards cached. A streaming pipeline's
peak must not grow with the amount of data: the script prints the 10x / 1x ratio of the
peak total RSS and of the largest process, measured in the same run.

    pip install -e ".[bench]"
    python ../shared/bench/make_corpus.py /tmp/corpus 20 500
    python scripts/bench_memory.py /tmp/corpus --multiples 1 10
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import threading
import time


def ray_processes(driver_pid: int):
    import psutil

    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            name = p.info["name"] or ""
            if p.info["pid"] == driver_pid or name.startswith("ray::") or "raylet" in name \
                    or "gcs_server" in name or "ray/_private" in cmd or "default_worker.py" in cmd:
                yield p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


class Sampler(threading.Thread):
    """Every ``interval`` s: total RSS of the Ray processes + driver, and the largest one.
    (RSS counts the object store's shared-memory pages each process has touched.)"""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_total = self.peak_proc = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        import psutil

        pid = os.getpid()
        while not self._halt.is_set():
            total = biggest = 0
            for p in ray_processes(pid):
                try:
                    rss = p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                biggest = max(biggest, rss)
            self.peak_total = max(self.peak_total, total)
            self.peak_proc = max(self.peak_proc, biggest)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def run_once(shards, augment: str, batch_size: int):
    from specstream.pipeline import build_pipeline, torch_batches

    cfg = {"source": {"shards": shards, "block_rows": 250}, "labels": {"num_classes": 10},
           "decode": {"num_cpus": 0.5}, "augment": augment, "actors": {"num_cpus": 0.5}}
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    pipe = build_pipeline(cfg)
    n = 0
    for b in torch_batches(pipe.dataset, batch_size=batch_size, device="cpu", ledger=pipe.ledger):
        n += len(b["key"])
    dt = time.perf_counter() - t0
    sampler.stop()
    totals = pipe.report()["totals"]
    return n, dt, sampler, totals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", help="folder of the reference corpus (shard-*.tar)")
    p.add_argument("--multiples", type=int, nargs="+", default=[1, 10])
    p.add_argument("--augment", default="LD")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-cpus", type=int, default=None, help="Ray CPUs (default: all)")
    args = p.parse_args(argv)

    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    shards = sorted(glob.glob(os.path.join(args.corpus, "*.tar")))
    if not shards:
        sys.exit(f"no shards in {args.corpus}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        for m in args.multiples:
            d = os.path.join(tmp, f"x{m}")
            os.makedirs(d)
            for r in range(m):
                for i, s in enumerate(shards):
                    os.symlink(os.path.abspath(s), os.path.join(d, f"shard-{r:03d}-{i:06d}.tar"))
            n, dt, smp, totals = run_once(d, args.augment, args.batch_size)
            rows.append((m, n, dt, smp, totals))
            print(f"{m:3d}x: {len(shards) * m:5d} shards, {n:7d} samples in {dt:6.1f} s ({n / dt:6.0f}/s); "
                  f"peak RSS of Ray processes + driver {smp.peak_total / 2**20:7.0f} MiB, largest process "
                  f"{smp.peak_proc / 2**20:6.0f} MiB ({smp.samples} readings); balanced: {totals['balanced']}",
                  flush=True)
    ray.shutdown()
    base = rows[0]
    for m, n, dt, smp, _ in rows[1:]:
        r_total = smp.peak_total / base[3].peak_total
        r_proc = smp.peak_proc / base[3].peak_proc
        verdict = "bounded" if r_total < 1.25 and r_proc < 1.25 else "GROWS"
        print(f"{m}x / {base[0]}x: samples {n / base[1]:.1f}x; peak total RSS {r_total:.2f}x, largest process "
              f"{r_proc:.2f}x -> {verdict} (threshold 1.25x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
