"""``specstream inspect SHARDS``: what a set of shards holds, without Ray and without decoding
any audio (soundfile reads only the headers): samples, durations, sample rates, channels,
formats, labels, and every problem the reader or the header check met."""
from __future__ import annotations

import io
import json
import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

import soundfile as sf

from ..labels import LabelError, label_of
from .audio import _sf_reason
from .samples import ReaderOptions, quarantine_entry, read_shard
from .shards import Storage, expand_shards


def _inspect_shard(url: str, storage: Storage, label_field: str) -> dict:
    out = {"shard": url, "samples": 0, "rows": 0, "durations": [], "rates": Counter(), "channels": Counter(),
           "formats": Counter(), "labels": Counter(), "problems": [], "bytes": 0, "unread": None,
           "compression": None, "shard_bytes": None, "corrupt": None}
    for table, bad, stats in read_shard(url, storage, ReaderOptions()):
        out["problems"].extend(bad)
        out["samples"] = stats.samples
        out["unread"], out["compression"], out["shard_bytes"] = stats.unread, stats.compression, stats.bytes_total
        out["corrupt"] = stats.corrupt
        if table is None:
            continue
        for row in table.to_pylist():
            out["rows"] += 1
            out["bytes"] += len(row["audio"])
            out["formats"][row["audio_format"]] += 1
            try:
                info = sf.info(io.BytesIO(row["audio"]))
                out["durations"].append(info.frames / info.samplerate)
                out["rates"][info.samplerate] += 1
                out["channels"][info.channels] += 1
            except (sf.LibsndfileError, RuntimeError, ValueError) as e:
                out["problems"].append(quarantine_entry(url, row["key"], "inspect",
                                                        f"undecodable audio header: {_sf_reason(e)}"))
            try:
                label = label_of(label_field, row["cls"], row["json"], row["txt"])
                for lab in (label if isinstance(label, list) else [label]):
                    out["labels"][str(lab)] += 1
            except LabelError:
                out["labels"]["<none>"] += 1
    return out


def inspect_shards(spec, storage: Optional[Storage] = None, label_field: str = "cls",
                   threads: int = 8) -> dict:
    """A summary dict of the shards ``spec`` names (paths, globs, brace patterns, s3://)."""
    storage = storage or Storage()
    urls = expand_shards(spec, storage)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(urls)))) as pool:
        parts = list(pool.map(lambda u: _inspect_shard(u, storage, label_field), urls))
    durations: List[float] = [d for p in parts for d in p["durations"]]
    merged: Dict[str, Counter] = {k: sum((p[k] for p in parts), Counter())
                                  for k in ("rates", "channels", "formats", "labels")}
    problems = [e for p in parts for e in p["problems"]]
    return {
        "shards": len(urls),
        "samples": sum(p["samples"] for p in parts),
        "readable": sum(p["rows"] for p in parts),
        "audio_bytes": sum(p["bytes"] for p in parts),
        "hours": sum(durations) / 3600,
        "duration_s": ({"min": min(durations), "median": statistics.median(durations), "max": max(durations)}
                       if durations else None),
        "sample_rates": {str(k): v for k, v in sorted(merged["rates"].items())},
        "channels": {str(k): v for k, v in sorted(merged["channels"].items())},
        "formats": dict(sorted(merged["formats"].items())),
        "labels": dict(sorted(merged["labels"].items())),
        "problems": problems,
        "compression": dict(Counter(p["compression"] or "none" for p in parts)),
        "unread_shards": {p["shard"]: p["unread"] for p in parts if p["unread"]},
        "corrupt_shards": {p["shard"]: p["corrupt"] for p in parts if p["corrupt"]},
        "per_shard": {p["shard"]: {"samples": p["samples"], "readable": p["rows"], "bytes": p["shard_bytes"],
                                   "compression": p["compression"], "unread": p["unread"], "corrupt": p["corrupt"],
                                   "problems": len(p["problems"])} for p in parts},
    }


def format_inspection(s: dict, max_problems: int = 20) -> str:
    lines = [f"{s['shards']} shard(s), {s['samples']} samples, {s['readable']} readable, "
             f"{s['audio_bytes'] / 1e6:.1f} MB of audio, {s['hours']:.3f} h"]
    if s["duration_s"]:
        d = s["duration_s"]
        lines.append(f"duration (s): min {d['min']:.3f}  median {d['median']:.3f}  max {d['max']:.3f}")
    lines.append("sample rates: " + ", ".join(f"{k} Hz: {v}" for k, v in s["sample_rates"].items()))
    lines.append("channels: " + ", ".join(f"{k}: {v}" for k, v in s["channels"].items()))
    lines.append("formats: " + ", ".join(f"{k}: {v}" for k, v in s["formats"].items()))
    labels = sorted(s["labels"].items(), key=lambda kv: -kv[1])
    lines.append(f"labels ({len(labels)}): " + ", ".join(f"{k}: {v}" for k, v in labels[:30])
                 + (" ..." if len(labels) > 30 else ""))
    lines.append("compression: " + ", ".join(f"{k}: {v}" for k, v in sorted(s["compression"].items())))
    if s["unread_shards"]:
        lines.append(f"NOT READ to the end: {len(s['unread_shards'])} shard(s) (sample counts above are partial)")
        lines += [f"  {u}: from byte {v['from_byte']}: {v['reason']}" for u, v in s["unread_shards"].items()]
    if s["corrupt_shards"]:
        lines.append(f"CORRUPT: {len(s['corrupt_shards'])} compressed shard(s) whose end checksum failed")
        lines += [f"  {u}: {v}" for u, v in s["corrupt_shards"].items()]
    lines.append(f"problems: {len(s['problems'])}")
    for e in s["problems"][:max_problems]:
        lines.append(f"  {e['shard']}  {e['key']}  [{e['stage']}] {e['reason']}")
    if len(s["problems"]) > max_problems:
        lines.append(f"  ... {len(s['problems']) - max_problems} more (--json for all)")
    return "\n".join(lines)


def to_json(s: dict) -> str:
    return json.dumps(s, indent=2)
