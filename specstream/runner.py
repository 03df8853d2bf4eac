"""``specstream run CONFIG``: build the pipeline, stream it to the end in this process
(a progress bar with live samples/s), write the reconciliation report."""
from __future__ import annotations

import time
from typing import Optional


def run(config, epochs: int = 1, report_path: Optional[str] = None, progress: bool = True,
        batch_size: Optional[int] = None, stop_after: Optional[int] = None, state_out: Optional[str] = None,
        resume=None, keys_out: Optional[str] = None) -> dict:
    """Stream ``epochs`` passes. ``stop_after``: stop once that many samples are consumed (mid-epoch);
    ``state_out``: write the stream state there at the end (or at the stop); ``resume``: a state (path
    or dict) to continue from; ``keys_out``: write the delivered keys there, one per line."""
    from tqdm import tqdm

    from .pipeline import TrainStream, build_pipeline
    from .resume import save_state

    pipe = build_pipeline(config, resume=resume)
    cfg = pipe.config
    bs = batch_size or cfg.deliver.batch_size
    per_epoch = []
    stream = TrainStream(pipe.dataset, cfg, ledger=pipe.ledger, batch_size=bs, device="cpu")
    t_all = time.perf_counter()
    keys = open(keys_out, "w", encoding="utf-8") if keys_out else None
    total, stopped = 0, False
    spf = cfg.features.hop_length / cfg.features.sample_rate
    first_at, after_first, audio_after = None, 0, 0.0  # the first batch's arrival, and what came after it
    for e in range(epochs):
        n = 0
        t0 = time.perf_counter()
        with tqdm(desc=f"epoch {cfg.epoch + e}", unit=" samples", disable=not progress, smoothing=0.1) as bar:
            for b in stream:
                k = len(b["key"])
                n += k
                total += k
                now = time.perf_counter()
                if first_at is None:
                    first_at = now
                else:
                    after_first += k
                    audio_after += float(b["length"].sum()) * spf
                    if now > first_at:
                        bar.set_postfix_str(f"{audio_after / 3600 / (now - first_at):.4f} audio-h/s", refresh=False)
                bar.update(k)
                if keys is not None:
                    keys.writelines(f"{key}\n" for key in b["key"])
                if stop_after is not None and total >= stop_after:
                    stopped = True
                    break
        dt = time.perf_counter() - t0
        per_epoch.append({"epoch": cfg.epoch + e, "samples": n, "seconds": dt, "samples_per_s": n / dt if dt else 0,
                          "batches": stream.last_epoch["batches"],
                          "padding_fraction": stream.last_epoch["padding_fraction"]})
        if stopped:
            break
    if keys is not None:
        keys.close()
    state = stream.state_dict()
    if state_out:
        save_state(state, state_out)
    end = time.perf_counter()
    wall = end - t_all
    report = pipe.report()
    # steady: after the first batch (none when it was the only one)
    steady = end - first_at if first_at is not None and after_first else 0.0
    report["throughput"] = {
        "startup_s": round(first_at - t_all, 3) if first_at is not None else None,  # to the first batch
        "steady_s": round(steady, 3),
        "steady_samples_per_s": round(after_first / steady, 2) if steady > 0 else None,
        "steady_audio_hours_per_s": round(audio_after / 3600 / steady, 6) if steady > 0 else None,
        "stages": report.get("stages", {}),
    }
    if report_path:
        from .pipeline import write_report
        write_report(report, report_path)
    t = report["totals"]
    lines = [f"epoch {p['epoch']}: {p['samples']} samples in {p['batches']} batches ({p['padding_fraction']:.1%} "
             f"padding) in {p['seconds']:.1f} s = {p['samples_per_s']:.0f} samples/s" for p in per_epoch]
    lines.append(throughput_line(report["throughput"]))
    carried = f" + carried {t['carried']}" if t.get("carried") else ""
    lines.append(f"read {t['read']} = delivered {t['delivered']} + quarantined {t['quarantined']}{carried} over "
                 f"{t['shards']} shard(s): {'balanced' if t['balanced'] else 'NOT BALANCED'}"
                 + (f"; {t['resumes']} transient read error(s) resumed" if t.get("resumes") else ""))
    if t.get("shards_unread"):
        lines.append(f"NOT READ: {t['shards_unread']} shard(s) not read to their end "
                     f"({t['bytes_unread'] / 1e6:.1f} MB unread; how many samples they hold is unknown):")
        lines += [f"  {name}: from byte {s['unread']['from_byte']}: {s['unread']['reason']}"
                  for name, s in report["shards"].items() if s["unread"]][:10]
    if report["quarantine"]:
        lines.append(f"quarantined ({len(report['quarantine'])}):")
        lines += [f"  {q['shard']}  {q['key']}  [{q['stage']}] {q['reason']}" for q in report["quarantine"][:10]]
        if len(report["quarantine"]) > 10:
            lines.append(f"  ... {len(report['quarantine']) - 10} more in the report")
    if report_path:
        lines.append(f"report: {report_path}")
    if stopped:
        lines.append(f"stopped after {total} samples in epoch {state['epoch']} ({state['samples']} of it consumed); "
                     f"rows read ahead and not delivered make the report not balance: a run with --resume reads "
                     f"them" + (f"; state: {state_out}" if state_out else ""))
    elif state_out:
        lines.append(f"state: {state_out}")
    if t.get("skipped"):
        lines.append(f"resumed: {t['skipped']} sample(s) consumed before the state was saved were passed over unread")
    return {"epochs": per_epoch, "seconds": wall, "report": report, "text": "\n".join(lines), "state": state,
            "stopped": stopped}


def throughput_line(tp: dict, what: str = "delivered") -> str:
    """One line: start-up (to the first batch), then steady throughput after it, and each
    stage's audio hours per busy second of one worker (read, decode, featurize)."""
    if tp.get("startup_s") is None:
        return "no batch delivered"
    parts = [f"first batch after {tp['startup_s']:.1f} s"]
    if tp.get("steady_samples_per_s"):
        parts.append(f"then {tp['steady_samples_per_s']:.0f} samples/s = {tp['steady_audio_hours_per_s']:.4f} "
                     f"audio-h/s {what}")
    stages = ", ".join(f"{name} {s['audio_hours_per_busy_s']:.4f}" for name, s in tp.get("stages", {}).items()
                       if s.get("audio_hours_per_busy_s"))
    if stages:
        parts.append(f"per worker-second of each stage (audio-h): {stages}")
    return "; ".join(parts)


def feature_stats(config, max_samples: Optional[int] = None, progress: bool = True) -> dict:
    """Per-mel-bin mean and standard deviation of the clean features (no augmentation, no
    normalisation) over each sample's valid frames, streamed through the pipeline: the
    ``global_mean`` / ``global_std`` that ``features.normalize: global`` needs. Sums in
    float64 per bin; stops after ``max_samples`` when given."""
    import numpy as np
    from tqdm import tqdm

    from .config import load_config
    from .pipeline import build_pipeline, torch_batches

    cfg = load_config(config).to_dict()
    cfg["augment"] = None
    cfg["log_params"] = False
    cfg["features"] = {**cfg["features"], "normalize": "none", "global_mean": None, "global_std": None}
    pipe = build_pipeline(cfg)
    s1 = s2 = None
    frames = samples = 0
    with tqdm(desc="statistics", unit=" samples", disable=not progress) as bar:
        for b in torch_batches(pipe.dataset, batch_size=pipe.config.deliver.batch_size, device="cpu",
                               ledger=pipe.ledger):
            f = b["features"].double()
            valid = (np.arange(f.shape[-1])[None, :] < b["length"].numpy()[:, None])
            v = f.new_tensor(valid)[:, None, :]
            bs1, bs2 = (f * v).sum((0, 2)), (f * f * v).sum((0, 2))
            s1 = bs1 if s1 is None else s1 + bs1
            s2 = bs2 if s2 is None else s2 + bs2
            frames += int(valid.sum())
            samples += len(b["key"])
            bar.update(len(b["key"]))
            if max_samples is not None and samples >= max_samples:
                break
    if not frames:
        raise ValueError("statistics: no frames streamed")
    mean = s1 / frames
    std = (s2 / frames - mean * mean).clamp(min=1e-12).sqrt()
    return {"samples": samples, "frames": frames, "global_mean": [round(float(x), 6) for x in mean],
            "global_std": [round(float(x), 6) for x in std]}
