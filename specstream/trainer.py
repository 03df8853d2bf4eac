"""A small CNN trained through Ray Train on the stream (the demo's and pipelines/train.py's).

``train_loop`` runs on every TorchTrainer worker: it takes its dataset shard with
``ray.train.get_dataset_shard``, turns it into padded torch batches with
:func:`specstream.pipeline.torch_batches` and reports loss and samples/s each epoch.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from .augment.spec.mixing import labelled
from .features import utterance_mvn


class SmallCNN(torch.nn.Module):
    """log-mel [B, n_mels, T] + lengths -> logits [B, classes]; masked mean pooling over time."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        layers, c_in = [], 1
        for c_out in (width, 2 * width, 4 * width):  # three stride-2 blocks: time / 8
            layers += [torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                       torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()]
            c_in = c_out
        self.conv = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(c_in, num_classes)
        self.stride = 8

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = utterance_mvn(feats, lengths).unsqueeze(1)
        h = self.conv(x).mean(dim=2)  # [B, C, T']
        t_valid = (torch.arange(h.shape[-1], device=h.device)[None, :] * self.stride
                   < lengths[:, None]).to(h.dtype)
        h = (h * t_valid[:, None]).sum(-1) / t_valid.sum(-1).clamp(min=1)[:, None]
        return self.head(h)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """The batch's mean loss over its labelled rows (``labels.required: false`` keeps
    samples without a label: class -1, a multi-hot row of -1, or mixup's all-zero soft row;
    they add nothing). Multi-label: binary cross-entropy; class indices: cross-entropy; soft
    targets (mixup): soft cross-entropy."""
    if multi_label:
        t = target.float()
        has = labelled(t, t.shape[0], t.device)
    elif target.dtype.is_floating_point:  # soft targets (mixup): an all-zero row has no label
        has = target.sum(-1) > 0
    else:
        has = labelled(target, target.shape[0], target.device)
    # an unlabelled row's logits never reach the loss (nor, non-finite, its gradient)
    logits = torch.where(has[:, None], logits, torch.zeros_like(logits))
    if multi_label:
        per_row = F.binary_cross_entropy_with_logits(logits, t.clamp(min=0), reduction="none").mean(-1)
    elif target.dtype.is_floating_point:
        per_row = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
    else:
        per_row = F.cross_entropy(logits, target.clamp(min=0), reduction="none")
    return torch.where(has, per_row, torch.zeros_like(per_row)).sum() / has.sum().clamp(min=1)


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor) -> tuple:
    """(correct, counted) of a batch for the epoch's accuracy: class-index targets over the
    labelled rows (class -1, ``labels.required: false``, is not counted); soft or multi-hot
    targets are not scored (0, 0)."""
    if target.dtype.is_floating_point:
        return 0, 0
    has = labelled(target, target.shape[0], target.device)
    return int((logits.argmax(-1) == target)[has].sum()), int(has.sum())


def report_checkpoint(model, history, stream_state, metrics, optimizer=None) -> None:
    """Report ``metrics`` with a checkpoint from rank 0: model weights (``model.pt``), the
    optimizer's state (``optimizer.pt``, when given), history and the stream state
    (``stream_state.json``: where a resumed run continues)."""
    import ray.train

    from .resume import save_state

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            state = model.module.state_dict() if hasattr(model, "module") else model.state_dict()
            torch.save(state, os.path.join(tmp, "model.pt"))
            if optimizer is not None:
                torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
            with open(os.path.join(tmp, "history.json"), "w") as f:
                json.dump(history, f)
            save_state(stream_state, os.path.join(tmp, "stream_state.json"))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop(config: Dict[str, Any]) -> None:
    """Ray Train worker function. config: num_classes, epochs, lr, batch_size, ledger,
    multi_label, pipeline_config; ``checkpoint_every`` (steps: also checkpoint mid-epoch, with
    the stream state), ``resume_model`` / ``resume_optimizer`` (a checkpoint's model.pt and
    optimizer.pt to start from) and ``keys_dir`` (each rank appends the keys of every batch
    it trained on, one ``epoch step key`` line each, to keys-rank{R}.txt there, flushed per
    step: what was consumed before a crash can be checked against a checkpoint)."""
    import ray.train
    import ray.train.torch

    from .pipeline import TrainStream

    torch.manual_seed(config.get("seed", 0))
    net = SmallCNN(config["num_classes"])
    if config.get("resume_model"):
        net.load_state_dict(torch.load(config["resume_model"], map_location="cpu", weights_only=True))
    model = ray.train.torch.prepare_model(net)
    opt = torch.optim.AdamW(model.parameters(), lr=config.get("lr", 3e-3))
    if config.get("resume_optimizer"):
        opt.load_state_dict(torch.load(config["resume_optimizer"], map_location="cpu", weights_only=True))
    shard = ray.train.get_dataset_shard("train")
    ctx = ray.train.get_context()
    # the same number of batches on every rank (DDP steps together); bucketed when the config says so
    stream = TrainStream(shard, config.get("pipeline_config"), ledger=config.get("ledger"),
                         batch_size=config.get("batch_size"))
    history = []
    keys_log = None
    if config.get("keys_dir"):
        keys_log = open(os.path.join(config["keys_dir"], f"keys-rank{ctx.get_world_rank()}.txt"), "a",
                        encoding="utf-8")
    for epoch in range(config.get("epochs", 1)):
        t0, seen, losses, correct, labelled = time.perf_counter(), 0, [], 0, 0
        every = config.get("checkpoint_every")
        for step, batch in enumerate(stream, 1):
            logits = model(batch["features"], batch["length"])
            loss = loss_fn(logits, batch["target"], config.get("multi_label", False))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            seen += len(batch["key"])
            if keys_log is not None:
                keys_log.write("".join(f"{stream.base_epoch + epoch} {step} {k}\n" for k in batch["key"]))
                keys_log.flush()
            right, counted = accuracy_counts(logits, batch["target"])
            correct, labelled = correct + right, labelled + counted
            if every and step % every == 0:  # mid-epoch: every rank takes the state (a collective)
                report_checkpoint(model, history, stream.state_dict(),
                                  {"epoch": epoch, "step": step, "rank": ctx.get_world_rank(), "samples": seen,
                                   "history": json.dumps(history)}, optimizer=opt)
        dt = time.perf_counter() - t0
        quarter = max(1, len(losses) // 4)
        history.append({
            "epoch": epoch, "samples": seen, "seconds": round(dt, 3),
            "loss_first_quarter": sum(losses[:quarter]) / quarter if losses else float("nan"),
            "loss_last_quarter": sum(losses[-quarter:]) / quarter if losses else float("nan"),
            "accuracy": correct / max(labelled, 1),
            "data_wait_fraction": stream.last_epoch["data_wait_s"] / dt if dt else 0.0,  # time the step waited for data
            "first_batch_s": stream.last_epoch.get("first_batch_s"),
            "audio_hours": stream.last_epoch.get("audio_s", 0.0) / 3600,
            "batches": stream.last_epoch.get("batches"), "carried_out": stream.last_epoch.get("carried_out"),
        })
        metrics = {"epoch": epoch, "rank": ctx.get_world_rank(), "samples": seen,
                   "samples_per_s": seen / dt if dt else 0.0,
                   "loss": history[-1]["loss_last_quarter"], "history": json.dumps(history)}
        # Ray Train 2.x keeps only metrics that come with a checkpoint: rank 0 attaches one
        # (model weights, history, the stream state) each epoch.
        report_checkpoint(model, history, stream.state_dict(), metrics, optimizer=opt)
    if keys_log is not None:
        keys_log.close()


def run_training(dataset, num_classes: int, ledger=None, num_workers: int = 2, epochs: int = 1,
                 batch_size: Optional[int] = None, lr: float = 3e-3, use_gpu: bool = False,
                 cpus_per_worker: float = 1.0, multi_label: bool = False,
                 storage_path: Optional[str] = None, pipeline_config=None,
                 checkpoint_every: Optional[int] = None, resume_model: Optional[str] = None,
                 resume_optimizer: Optional[str] = None, keys_dir: Optional[str] = None):
    """Fit SmallCNN with a TorchTrainer over ``dataset``; returns Ray Train's Result.
    ``pipeline_config``: the pipeline's validated config, ``pipe.config`` (sampling: bucketing, equal steps;
    deliver.batch_size unless ``batch_size`` is given)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .pipeline import stream_data_config

    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"num_classes": num_classes, "epochs": epochs, "lr": lr,
                           "batch_size": batch_size, "ledger": ledger, "multi_label": multi_label,
                           "pipeline_config": pipeline_config, "checkpoint_every": checkpoint_every,
                           "resume_model": resume_model, "resume_optimizer": resume_optimizer,
                           "keys_dir": keys_dir},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        datasets={"train": dataset},
        dataset_config=stream_data_config(),  # split without truncating: TrainStream equalises the steps
        run_config=RunConfig(storage_path=storage_path, name="specstream"),
    )
    return trainer.fit()
