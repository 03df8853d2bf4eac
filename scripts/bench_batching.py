"""What batch composition costs and saves, with the baselines measured in the same run.

    python scripts/bench_batching.py --corpus bench-out/corpus --durations bench-out/durations

1. Shuffle buffer (``--corpus``: the reference corpus, ../shared/bench/make_corpus.py OUT 20 500):
   - the read path alone, in this process (no Ray): samples/s through one read task of all
     the corpus's shards interleaved, with no buffer, a 2,000- and a 10,000-sample buffer, and the peak
     Python memory each holds (tracemalloc: the buffer keeps raw bytes, not decoded audio);
   - the whole pipeline (Ray, decode, log-mel, delivery to this process): samples/s over
     ``--epochs`` epochs, file order vs shuffle_buffer 2000 + interleave 8, and how many
     shards the first batch mixes. Ratios: shuffled / file order.
2. Duration bucketing (``--durations``: scripts/make_duration_corpus.py OUT --count 2000):
   padding fraction, largest padded batch and samples/s for fixed-size batches
   (``--batch-size``) vs buckets (``--max-duration``), the same data in the same run.

Medians over ``--repeats``; the machine is shared: read the ratios.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import time
import tracemalloc


def read_path(urls, buffer: int, interleave: int) -> dict:
    from specstream.io.samples import ReaderOptions
    from specstream.io.shards import Storage
    from specstream.pipeline.plan import ReadPlan, SourceShards
    from specstream.pipeline.readtask import task_blocks

    plan = ReadPlan([SourceShards("a", urls, Storage())], interleave=interleave, shuffle_buffer=buffer, seed=0)
    tracemalloc.start()
    t0 = time.perf_counter()
    n = 0
    for block in task_blocks(plan, 0, 0, ReaderOptions(block_rows=250)):
        n += block.num_rows
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"samples": n, "samples_per_s": n / dt, "peak_mb": peak / 1e6}


def pipeline_rate(shards: str, sampling: dict, epochs: int) -> dict:
    from specstream.pipeline import TrainStream, build_pipeline

    cfg = {"source": {"shards": shards, "block_rows": 250}, "labels": {"field": "cls", "num_classes": 10},
           "decode": {"num_cpus": 0.5}, "features": {"n_mels": 80}, "sampling": sampling}
    pipe = build_pipeline(cfg)
    stream = TrainStream(pipe.dataset, pipe.config, ledger=pipe.ledger, batch_size=64, device="cpu")
    rates, first = [], None
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = 0
        for b in stream:
            if first is None:
                first = len(set(b["shard"]))
            n += len(b["key"])
        rates.append(n / (time.perf_counter() - t0))
    assert pipe.report()["totals"]["balanced"]
    return {"samples_per_s_later_epochs": statistics.median(rates[1:] or rates), "first_batch_shards": first}


def bucketing_run(shards: str, batch_size: int, bucketing) -> dict:
    from specstream.pipeline import TrainStream, build_pipeline

    cfg = {"source": {"shards": shards, "block_rows": 64}, "labels": {"field": "cls", "vocab": ["speech"]},
           "decode": {"mode": "full", "max_seconds": 36.0, "num_cpus": 0.5},
           "sampling": {"shuffle_buffer": 500, "interleave": 2, "bucketing": bucketing}}
    pipe = build_pipeline(cfg)
    stream = TrainStream(pipe.dataset, pipe.config, ledger=pipe.ledger, batch_size=batch_size, device="cpu")
    t0 = time.perf_counter()
    for _ in stream:
        pass
    dt = time.perf_counter() - t0
    e = stream.last_epoch
    return {"batches": e["batches"], "samples": e["samples"], "padding_fraction": e["padding_fraction"],
            "max_batch_padded_frames": e["max_batch_padded_frames"], "samples_per_s": e["samples"] / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="reference corpus folder (shard-*.tar)")
    ap.add_argument("--durations", help="duration corpus folder (scripts/make_duration_corpus.py)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--read-only", action="store_true", help="only the read path part (no Ray)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-duration", type=float, default=240.0)
    args = ap.parse_args()

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.corpus:
        urls = sorted(glob.glob(os.path.join(args.corpus, "*.tar")))
        print(f"read path, one read task of {len(urls)} interleaved shards (no Ray), median of {args.repeats}:")
        base = None
        for buf in (0, 2000, 10000):
            runs = [read_path(urls, buf, len(urls)) for _ in range(args.repeats)]
            rate = statistics.median(r["samples_per_s"] for r in runs)
            peak = statistics.median(r["peak_mb"] for r in runs)
            base = base or rate
            print(f"  shuffle_buffer {buf:>6}: {rate:8.0f} samples/s ({rate / base:.2f}x of no buffer), "
                  f"peak Python memory {peak:7.1f} MB")
    if args.read_only:
        return
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if args.corpus:
        shards = os.path.join(args.corpus, "shard-*.tar")
        plain = pipeline_rate(shards, {}, args.epochs)
        mixed = pipeline_rate(shards, {"shuffle_buffer": 2000, "interleave": 8}, args.epochs)
        print(f"pipeline (decode + log-mel 80, batches of 64 here), median of epochs 2..{args.epochs}:")
        print(f"  file order             : {plain['samples_per_s_later_epochs']:7.0f} samples/s, first batch from "
              f"{plain['first_batch_shards']} shard(s)")
        print(f"  shuffle 2000, interleave 8: {mixed['samples_per_s_later_epochs']:7.0f} samples/s "
              f"({mixed['samples_per_s_later_epochs'] / plain['samples_per_s_later_epochs']:.2f}x), first batch from "
              f"{mixed['first_batch_shards']} shards")
    if args.durations:
        shards = os.path.join(args.durations, "shard-*.tar")
        fixed = bucketing_run(shards, args.batch_size, None)
        buck = bucketing_run(shards, args.batch_size, {"max_duration_s": args.max_duration, "num_buckets": 10,
                                                       "buffer": 500})
        print(f"bucketing on {fixed['samples']} utterances (decode.mode full):")
        for name, r in (("fixed batches of %d" % args.batch_size, fixed),
                        (f"buckets, {args.max_duration:g} s padded", buck)):
            print(f"  {name:<26}: padding {r['padding_fraction']:6.1%}, {r['batches']:4d} batches, largest batch "
                  f"{r['max_batch_padded_frames']} padded frames, {r['samples_per_s']:6.1f} samples/s")
        print(f"  padding ratio bucketed / fixed: {buck['padding_fraction'] / max(fixed['padding_fraction'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
