"""``specstream demo``: synthetic corpus -> shards -> Ray Data pipeline -> 2-worker Ray Train run."""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from .synth import CLASSES, write_corpus

DEMO_VERSION = "v2"


def cache_dir() -> str:
    base = os.environ.get("SPECSTREAM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "specstream")
    return os.path.join(base, f"demo-{DEMO_VERSION}")


def prepare_shards(root: str, per_class: int, seed: int, progress: bool = True) -> str:
    """Generate the corpus and its shards once; later runs reuse them."""
    from .io.make_shards import make_shards

    shards = os.path.join(root, f"shards-{per_class}-{seed}")
    marker = os.path.join(shards, "DONE.json")
    if os.path.exists(marker):
        return shards
    audio = os.path.join(root, f"audio-{per_class}-{seed}")
    n = write_corpus(audio, per_class=per_class, seed=seed)
    summary = make_shards(audio, shards, max_count=250, progress=progress)
    if summary.samples_written != n:
        raise RuntimeError(f"demo corpus: wrote {summary.samples_written} of {n} clips:\n{summary.to_text()}")
    with open(marker, "w") as f:
        json.dump({"clips": n, "shards": len(summary.shards)}, f)
    return shards


def demo_config(shards: str, seed: int = 0) -> dict:
    return {
        "source": {"shards": os.path.join(shards, "shard-*.tar"), "block_rows": 125},
        "decode": {"sample_rate": 16000, "mode": "fixed", "clip_seconds": 1.0, "crop": "random",
                   "num_cpus": 0.5},
        "labels": {"field": "cls", "vocab": list(CLASSES)},
        "features": {"n_fft": 400, "hop_length": 160, "n_mels": 64},
        "augment": "SM",  # SpecAugment SM (Park et al. 2019): time warp, 2 freq + 2 time masks
        "actors": {"count": 1, "num_cpus": 0.5, "batch_size": 64},
        "deliver": {"batch_size": 64},
        "seed": seed,
    }


def run_demo(per_class: int = 200, epochs: int = 3, workers: int = 2, seed: int = 0,
             report_path: Optional[str] = None, progress: bool = True) -> dict:
    import ray

    from .pipeline import build_pipeline
    from .trainer import run_training

    t_start = time.perf_counter()
    shards = prepare_shards(cache_dir(), per_class, seed, progress)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    cpus_per_worker = 0.25
    pipe = build_pipeline(demo_config(shards, seed), reserved_cpus=workers * cpus_per_worker)
    t0 = time.perf_counter()
    result = run_training(pipe.dataset, num_classes=len(CLASSES), ledger=pipe.ledger,
                          num_workers=workers, epochs=epochs, batch_size=64,
                          cpus_per_worker=cpus_per_worker, storage_path=os.path.join(cache_dir(), "ray_results"),
                          pipeline_config=pipe.config)
    train_s = time.perf_counter() - t0
    report = pipe.report()
    if report_path:
        with open(report_path, "w") as f:
            json.dump(report, f, indent=2)
    history = json.loads(result.metrics["history"]) if result.metrics else []
    totals = report["totals"]
    return {
        "shards": len(pipe.shards), "classes": len(CLASSES), "epochs": epochs, "workers": workers,
        "read": totals["read"], "delivered": totals["delivered"],
        "quarantined": totals["quarantined"], "carried": totals["carried"], "balanced": totals["balanced"],
        "train_seconds": train_s, "samples_per_s": totals["delivered"] / train_s,
        "history_rank0": history, "total_seconds": time.perf_counter() - t_start,
    }


def format_summary(s: dict) -> str:
    lines = [
        "specstream demo",
        f"  corpus      : {s['shards']} shards, {s['classes']} classes, SpecAugment SM, "
        f"{s['epochs']} epochs x {s['workers']} Ray Train workers",
        f"  samples     : read {s['read']}  delivered {s['delivered']}  quarantined {s['quarantined']}"
        f"  carried {s['carried']}  ({'balanced' if s['balanced'] else 'NOT BALANCED'}: read = delivered + "
        f"quarantined + carried, the rows a rank held past the last common step)",
        f"  throughput  : {s['samples_per_s']:.0f} samples/s into the trainers "
        f"(train wall {s['train_seconds']:.1f} s, total {s['total_seconds']:.1f} s)",
    ]
    for h in s["history_rank0"]:
        lines.append(f"  epoch {h['epoch']} (rank 0): loss {h['loss_first_quarter']:.3f} -> "
                     f"{h['loss_last_quarter']:.3f}, accuracy {h['accuracy']:.2f}, {h['samples']} samples, "
                     f"{h['samples'] / h['seconds']:.0f} samples/s, waiting for data "
                     f"{100 * h['data_wait_fraction']:.0f}% of the step time")
    return "\n".join(lines)
