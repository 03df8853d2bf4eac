"""``specstream preview CONFIG --out FILE.png``: the first N samples of a config's shards,
log-mel before and after its augmentation, each with the parameters drawn for it. Runs the
stage callables in this process (no Ray), exactly as the featurize actors would."""
from __future__ import annotations

import json
from typing import List, Optional

import numpy as np

from .config import PipelineConfig, load_config
from .io.samples import ReaderOptions, read_shard, rows_to_table
from .io.shards import expand_shards
from .pipeline.stages import DecodeStage, FeaturizeStage, storage_of


def _first_rows(cfg: PipelineConfig, n: int) -> List[dict]:
    storage = storage_of(cfg)
    rows: List[dict] = []
    for url in expand_shards(cfg.source.shards, storage):
        for table, _, _ in read_shard(url, storage, ReaderOptions(block_rows=n)):
            if table is not None:
                rows.extend(table.to_pylist())
            if len(rows) >= n:
                return rows[:n]
    return rows


def _short(params: dict, width: int = 70) -> str:
    """Recorded parameters of one sample as a few wrapped lines (active ops only)."""
    parts = []
    for name, p in params.items():
        if not p.get("active", True):
            continue
        vals = []
        for k, v in p.items():
            if k == "active":
                continue
            if isinstance(v, float):
                vals.append(f"{k}={v:.3g}")
            elif isinstance(v, int) and not isinstance(v, bool):
                vals.append(f"{k}={v}")
            elif isinstance(v, list) and len(v) <= 4:
                vals.append(f"{k}={[round(x, 2) if isinstance(x, float) else x for x in v]}")
        parts.append(f"{name.split(':', 1)[1]}({', '.join(vals)})")
    text, line = [], ""
    for part in parts:
        if line and len(line) + len(part) + 2 > width:
            text.append(line)
            line = ""
        line = f"{line}; {part}" if line else part
    return "\n".join(text + [line]) if line or text else "(no op active)"


def caption(decoded, augmented) -> str:
    """A sample's label as the preview prints it: "no label" when the decoded target says so
    (labels.required: false; a mixup turns it into an all-zero soft row), else the
    augmented target (a class, or soft / multi-hot values)."""
    if (np.asarray(decoded) < 0).any():
        return "no label"
    return f"soft {np.round(augmented, 2).tolist()}" if np.ndim(augmented) else f"class {int(augmented)}"


def preview(config, out: str, n: int = 4, epoch: Optional[int] = None) -> List[dict]:
    """Write the figure to ``out``; returns per sample {key, label, params}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit('preview needs matplotlib: pip install "specstream[preview]"') from None
    cfg = load_config(config)
    if epoch is not None:
        cfg.epoch = epoch
    rows = _first_rows(cfg, n)
    if not rows:
        raise SystemExit("preview: the shards hold no readable sample")
    quarantined: List[dict] = []
    decoded = DecodeStage(cfg, quarantined.extend)(rows_to_table(rows))
    if "epoch" not in decoded:
        decoded["epoch"] = np.full(len(decoded["key"]), cfg.epoch, dtype=np.int64)
    clean_cfg = load_config({**cfg.to_dict(), "augment": None, "log_params": False})
    before = FeaturizeStage(clean_cfg, device="cpu")(decoded)
    aug_cfg = load_config({**cfg.to_dict(), "log_params": True})
    after = FeaturizeStage(aug_cfg, device="cpu")(decoded)
    k = len(decoded["key"])
    fig, axes = plt.subplots(k, 2, figsize=(12, 2.9 * k), squeeze=False)
    info = []
    for i in range(k):
        params = json.loads(after["aug_params"][i])
        label = (caption(decoded["target"][i], after["target"][i]) if "target" in decoded
                 else f"{len(decoded['tokens'][i])} tokens")
        for j, (res, title) in enumerate(((before, "before"), (after, "after"))):
            f = res["features"][i]
            f = f[:, : int(res["length"][i])] if f.ndim == 2 else f
            ax = axes[i, j]
            ax.imshow(f, origin="lower", aspect="auto", cmap="magma")
            ax.set_title(f"{decoded['key'][i]} ({title}; {label})", fontsize=9)
            ax.set_ylabel("mel bin", fontsize=8)
        axes[i, 1].set_xlabel(_short(params), fontsize=7)
        info.append({"key": str(decoded["key"][i]), "label": label, "params": params})
    fig.suptitle(f"augment: {json.dumps(cfg.augment)[:120]}   seed {cfg.seed}, epoch {cfg.epoch}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return info
