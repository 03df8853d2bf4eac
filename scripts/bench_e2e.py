"""End to end, the same work in every contender, in one run: ratios against a torch DataLoader.

    python ../shared/bench/make_corpus.py /tmp/corpus 20 500
    python scripts/bench_e2e.py /tmp/corpus --epochs 2

The work: read the shards' samples, decode the FLAC, a log-mel of 80 bins (specstream's
LogMel, the same module everywhere: 400-point FFT, hop 160, natural log), 2 frequency masks
(width <= 27) and 2 time masks (width <= 20), and padded batches of 64 (features, lengths,
labels) in this process. Contenders:

- single process: webdataset's tar reader, soundfile, the log-mel and torchaudio's masks per
  sample, collated in the loop;
- webdataset + torch DataLoader (``--workers`` worker processes, default 2): the same
  per-sample function, the DataLoader's collation;
- ``ray.data.read_webdataset`` + ``map_batches`` (the same function over each batch) and
  ``iter_torch_batches``;
- specstream, featurize as tasks fused with read+decode (``actors.compute: tasks``) and as an
  actor pool (``compute: actors``), through ``TrainStream`` (batches of 64), with the
  masks as its ``freq_mask``/``time_mask`` ops; and the tasks layout once more with
  ``actors.retain_freed_memory: false`` (glibc's own trimming), run first.

Each contender runs ``--epochs`` passes; the first is reported apart (workers start, imports,
Ray Data's plan), with its time to the first batch; later passes are the steady rate. Ray
starts once, before the Ray contenders, and its start-up is reported on its own line.
The machine is shared: read the ratios, and run it again rather than trust one figure.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

BATCH = 64
_LOGMEL = None


def logmel():
    global _LOGMEL
    if _LOGMEL is None:
        from specstream.features import LogMel, MelConfig

        _LOGMEL = LogMel(MelConfig(n_mels=80))
    return _LOGMEL


def features(flac: bytes):
    """One sample's work outside specstream: decode, log-mel, 2 frequency + 2 time masks
    (torchaudio's mask_along_axis on [1, F, T]: axis 1 frequency, axis 2 time)."""
    import soundfile as sf
    import torchaudio

    x, _ = sf.read(io.BytesIO(flac), dtype="float32", always_2d=True)
    wave = torch.from_numpy(np.ascontiguousarray(x.mean(1)))[None]
    with torch.no_grad():
        feats, frames = logmel()(wave, torch.tensor([wave.shape[1]]))
        spec = feats[:1]
        for axis, width in ((1, 27), (1, 27), (2, 20), (2, 20)):
            spec = torchaudio.functional.mask_along_axis(spec, width, 0.0, axis)
    return spec[0], int(frames[0])


def collate(items):
    """[(features [F, T_i], frames, label)] -> padded batch."""
    T = max(f.shape[-1] for f, _, _ in items)
    out = torch.zeros(len(items), items[0][0].shape[0], T)
    for i, (f, _, _) in enumerate(items):
        out[i, :, : f.shape[-1]] = f
    return {"features": out, "length": torch.tensor([n for _, n, _ in items]),
            "target": torch.tensor([y for _, _, y in items])}


def wds_sample(sample):
    f, n = features(sample["flac"])
    return f, n, int(sample["cls"])


def timed_epochs(make_iter, epochs: int):
    """[(seconds to first batch, seconds, samples)] per epoch."""
    out = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        first, n = None, 0
        for b in make_iter():
            if first is None:
                first = time.perf_counter() - t0
            n += len(b["length"])
        out.append((first, time.perf_counter() - t0, n))
    return out


def single_process(urls, epochs):
    import webdataset as wds

    def batches():
        items = []
        for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            items.append(wds_sample(s))
            if len(items) == BATCH:
                yield collate(items)
                items = []
        if items:
            yield collate(items)

    return timed_epochs(batches, epochs)


def dataloader(urls, epochs, workers):
    import webdataset as wds
    from torch.utils.data import DataLoader

    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=None,
                        workersplitter=wds.split_by_worker).map(wds_sample)
    loader = DataLoader(ds, batch_size=BATCH, num_workers=workers, collate_fn=collate)
    return timed_epochs(lambda: iter(loader), epochs)


def ray_data(urls, epochs):
    import ray

    def fn(batch):
        items = [features(f) for f in batch["flac"]]
        T = max(f.shape[-1] for f, _ in items)
        feats = np.zeros((len(items), items[0][0].shape[0], T), np.float32)
        for i, (f, _) in enumerate(items):
            feats[i, :, : f.shape[-1]] = f.numpy()
        return {"features": feats, "length": np.array([n for _, n in items]),
                "target": np.array([int(c) for c in batch["cls"]])}

    def batches():
        ds = ray.data.read_webdataset(urls, decoder=None).map_batches(fn, batch_size=BATCH)
        return ds.iter_torch_batches(batch_size=BATCH)

    return timed_epochs(batches, epochs)


def specstream(corpus, epochs, compute, retain=True):
    from specstream.pipeline import TrainStream, build_pipeline

    cfg = {"source": {"shards": os.path.join(corpus, "*.tar")}, "labels": {"num_classes": 10},
           "decode": {"mode": "full"}, "features": {"n_mels": 80},
           "actors": {"compute": compute, "batch_size": BATCH, "num_cpus": 1, "retain_freed_memory": retain},
           "augment": {"ops": [{"op": "freq_mask", "max_width": 27, "count": 2, "fill": "zero"},
                               {"op": "time_mask", "max_width": 20, "count": 2, "fill": "zero"}]}}
    pipe = build_pipeline(cfg)
    stream = TrainStream(pipe.dataset, pipe.config, ledger=pipe.ledger, batch_size=BATCH, device="cpu")
    out = timed_epochs(lambda: iter(stream), epochs)
    assert pipe.report()["totals"]["balanced"]
    return out


def summary(runs):
    first = runs[0]
    later = runs[1:] or runs
    return {"first_batch_s": first[0], "first_epoch_samples_per_s": first[2] / first[1],
            "later_samples_per_s": statistics.median(n / s for _, s, n in later), "samples": first[2]}


def plot(results: dict, base: dict, path: str) -> None:
    """Later-epoch samples/s and time to the first batch, one bar per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    rates = [results[n]["later_samples_per_s"] for n in names]
    a.barh(names, rates, color="#4C72B0")
    a.axvline(base["later_samples_per_s"], color="grey", lw=0.8, ls="--")
    a.set_xlabel("samples/s after the first epoch (higher is better)")
    a.invert_yaxis()
    b.barh(names, [results[n]["first_batch_s"] for n in names], color="#DD8452")
    b.set_xlabel("seconds to the first batch (lower is better)")
    b.invert_yaxis()
    b.set_yticklabels([])
    fig.suptitle("decode -> log-mel 80 -> 2 freq + 2 time masks -> batches of 64, reference corpus")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--json", help="write the figures here too")
    p.add_argument("--plot", help="draw them here (PNG)")
    args = p.parse_args(argv)
    urls = sorted(glob.glob(os.path.join(args.corpus, "*.tar")))
    torch.set_num_threads(1)  # per process: every contender runs several processes on the same cores
    results = {}
    results["single process"] = summary(single_process(urls, args.epochs))
    results[f"webdataset + DataLoader ({args.workers} workers)"] = summary(dataloader(urls, args.epochs, args.workers))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    t = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t
    ray.data.DataContext.get_current().enable_progress_bars = False
    results["ray.data.read_webdataset + map_batches"] = summary(ray_data(urls, args.epochs))
    # before the default: a worker process that has kept its freed memory keeps doing so
    results["specstream (tasks, retain_freed_memory off)"] = summary(
        specstream(args.corpus, args.epochs, "tasks", retain=False))
    results["specstream (tasks)"] = summary(specstream(args.corpus, args.epochs, "tasks"))
    results["specstream (actors)"] = summary(specstream(args.corpus, args.epochs, "actors"))
    base = results[f"webdataset + DataLoader ({args.workers} workers)"]
    print(f"{len(urls)} shards, {base['samples']} samples, batches of {BATCH}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}; Ray start-up {ray_start:.1f} s (not counted below)")
    print(f"{'contender':45s} {'first batch':>11s} {'epoch 1':>9s} {'later':>9s} {'vs DataLoader':>13s}")
    for name, r in results.items():
        print(f"{name:45s} {r['first_batch_s']:9.2f} s {r['first_epoch_samples_per_s']:7.0f}/s "
              f"{r['later_samples_per_s']:7.0f}/s {r['later_samples_per_s'] / base['later_samples_per_s']:12.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ray_start_s": ray_start, "cpus": os.cpu_count(), "results": results}, f, indent=2)
    if args.plot:
        plot(results, base, args.plot)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
