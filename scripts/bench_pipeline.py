"""Whole-pipeline throughput: shards -> read+decode -> log-mel (+ augmentation) -> padded torch
batches in the driver, vs the same stages in a single-process tight loop, in one run.

The single-process loop uses the same stage callables (no Ray): read_shard -> DecodeStage ->
FeaturizeStage per block. Ray figures are per pass: the first (cold: workers start and import
torch) and the median of the later ones (warm).

    python ../shared/bench/make_corpus.py /tmp/corpus 20 500
    python scripts/bench_pipeline.py /tmp/corpus --augment LD --passes 3
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time


def config(corpus: str, compute: str, augment):
    return {"source": {"shards": os.path.join(corpus, "*.tar")}, "labels": {"num_classes": 10},
            "actors": {"compute": compute, "batch_size": 64}, "augment": augment}


def single_process(corpus: str, augment) -> float:
    from specstream.io.samples import read_shard
    from specstream.pipeline.stages import DecodeStage, FeaturizeStage

    cfg = config(corpus, "tasks", augment)
    dec, feat = DecodeStage(cfg), FeaturizeStage(cfg, device="cpu")
    t, n = time.perf_counter(), 0
    for url in sorted(glob.glob(os.path.join(corpus, "*.tar"))):
        for table, _, _ in read_shard(url):
            if table is not None:
                n += len(feat(dec(table))["key"])
    return n / (time.perf_counter() - t)


def ray_passes(corpus: str, compute: str, augment, passes: int):
    from specstream.pipeline import build_pipeline, torch_batches

    pipe = build_pipeline(config(corpus, compute, augment))
    rates = []
    for _ in range(passes):
        t, n = time.perf_counter(), 0
        for b in torch_batches(pipe.dataset, batch_size=64, device="cpu", ledger=pipe.ledger):
            n += len(b["key"])
        rates.append(n / (time.perf_counter() - t))
    assert pipe.report()["totals"]["balanced"]
    return rates


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus")
    p.add_argument("--augment", default=None, help="preset name (e.g. LD); default none")
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args(argv)

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    base = single_process(args.corpus, args.augment)
    print(f"augment={args.augment}  {os.cpu_count()} CPUs")
    print(f"single-process loop (same stages, no Ray): {base:7.0f} samples/s")
    for compute in ("tasks", "actors"):
        rates = ray_passes(args.corpus, compute, args.augment, args.passes)
        warm = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
        print(f"Ray pipeline, featurize as {compute:6s}: cold {rates[0]:7.0f}  warm {warm:7.0f} samples/s"
              f"  = {warm / base:.2f}x the single-process loop")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
