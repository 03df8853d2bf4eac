"""``specstream run CONFIG``: build the pipeline, stream it to the end in this process
(a progress bar with live samples/s), write the reconciliation report."""
from __future__ import annotations

import time
from typing import Optional


def run(config, epochs: int = 1, report_path: Optional[str] = None, progress: bool = True,
        batch_size: Optional[int] = None) -> dict:
    from tqdm import tqdm

    from .pipeline import build_pipeline, torch_batches

    pipe = build_pipeline(config)
    cfg = pipe.config
    bs = batch_size or cfg.deliver.batch_size
    per_epoch = []
    t_all = time.perf_counter()
    for e in range(epochs):
        n = 0
        t0 = time.perf_counter()
        with tqdm(desc=f"epoch {cfg.epoch + e}", unit=" samples", disable=not progress, smoothing=0.1) as bar:
            for b in torch_batches(pipe.dataset, batch_size=bs, device="cpu", ledger=pipe.ledger,
                                   prefetch_batches=cfg.deliver.prefetch_batches, drop_last=cfg.deliver.drop_last):
                k = len(b["key"])
                n += k
                bar.update(k)
        dt = time.perf_counter() - t0
        per_epoch.append({"epoch": cfg.epoch + e, "samples": n, "seconds": dt, "samples_per_s": n / dt if dt else 0})
    wall = time.perf_counter() - t_all
    report = pipe.write_report(report_path) if report_path else pipe.report()
    t = report["totals"]
    lines = [f"epoch {p['epoch']}: {p['samples']} samples in {p['seconds']:.1f} s = {p['samples_per_s']:.0f} samples/s"
             for p in per_epoch]
    lines.append(f"read {t['read']} = delivered {t['delivered']} + quarantined {t['quarantined']} over "
                 f"{t['shards']} shard(s): {'balanced' if t['balanced'] else 'NOT BALANCED'}"
                 + (f"; {t['resumes']} transient read error(s) resumed" if t.get("resumes") else ""))
    if report["quarantine"]:
        lines.append(f"quarantined ({len(report['quarantine'])}):")
        lines += [f"  {q['shard']}  {q['key']}  [{q['stage']}] {q['reason']}" for q in report["quarantine"][:10]]
    if report_path:
        lines.append(f"report: {report_path}")
    return {"epochs": per_epoch, "seconds": wall, "report": report, "text": "\n".join(lines)}
