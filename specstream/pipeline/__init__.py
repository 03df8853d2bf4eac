"""The Ray Data pipeline: read -> decode -> featurize (+ augment) -> deliver.

This package is the only one that knows Ray. Typical use::

    from specstream.pipeline import build_pipeline, torch_batches
    p = build_pipeline("configs/demo.yaml")
    for batch in torch_batches(p.dataset, batch_size=64, ledger=p.ledger):
        ...
    print(p.report()["totals"])

The package's names are imported on first use, so a process that needs only a light part
(the ledger actor, which imports ``specstream.pipeline.ledger``) does not load torch and the
augmentation library with it.
"""
from __future__ import annotations

from importlib import import_module

_WHERE = {
    "Pipeline": "build", "build_pipeline": "build", "build_dataset": "build", "check_resources": "build",
    "FeaturizeActor": "build", "storage_from_config": "build", "output_block_bytes": "build", "init_ray": "build",
    "torch_batches": "deliver", "collate": "deliver",
    "DecodeStage": "stages", "FeaturizeStage": "stages",
    "shard_order": "plan",
    "TrainStream": "stream", "stream_data_config": "stream",
    "Ledger": "ledger", "LedgerClient": "ledger", "write_report": "ledger",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
