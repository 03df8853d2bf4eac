"""Delivery: rows from a Ray Train dataset shard or a ``streaming_split`` piece -> padded torch
batches on the trainer's device, with delivered counts reported to the run's ledger."""
from __future__ import annotations

from typing import Dict, Iterator, Union

import numpy as np
import torch

from . import columns as C
from .stages import pad_stack


def collate(batch: Dict[str, np.ndarray]) -> Dict[str, object]:
    """numpy batch -> torch batch: ``features`` [B, n_mels, T_max] zero-padded, ``length`` [B],
    ``target`` ([B] int64 or [B, C] float32), ``key`` and ``shard`` as lists of str (and
    ``aug_params``, JSON per sample, when the pipeline logs them; ``frame_target`` [B, T_max, C]
    with ``labels.frame_field``). With ``labels.tokenizer``: ``tokens`` [B, U_max] int64 padded
    with 0 (the CTC blank) and ``token_length`` [B] instead of ``target``; with mixup besides,
    ``mix_lambda`` [B] (1 for a row not mixed), ``mix_tokens`` and ``mix_token_length`` (the
    partner's transcript): see :func:`specstream.losses.mixed_ctc_loss`."""
    feats = pad_stack(batch[C.FEATURES], length_axis=-1)
    out = {
        C.FEATURES: torch.from_numpy(np.array(feats, dtype=np.float32)),
        C.LENGTH: torch.from_numpy(np.array(batch[C.LENGTH], dtype=np.int64)),
        C.KEY: [str(k) for k in batch[C.KEY]],
        C.SHARD: [str(s) for s in batch[C.SHARD]],
    }
    if C.EPOCH in batch:
        out[C.EPOCH] = torch.from_numpy(np.array(batch[C.EPOCH], dtype=np.int64))
    if C.INDEX in batch:  # each sample's ordinal in its shard (a stream state records these)
        out[C.INDEX] = torch.from_numpy(np.array(batch[C.INDEX], dtype=np.int64))
    if C.AUG_PARAMS in batch:
        out[C.AUG_PARAMS] = [str(p) for p in batch[C.AUG_PARAMS]]
    if C.FRAME_TARGET in batch:  # [B, T_max, C], zero past each sample's frames
        out[C.FRAME_TARGET] = torch.from_numpy(np.array(pad_stack(batch[C.FRAME_TARGET], length_axis=-2),
                                                        dtype=np.float32))
    for name, length in ((C.TOKENS, C.TOKEN_LENGTH), (C.MIX_TOKENS, C.MIX_TOKEN_LENGTH)):
        # sequence targets: [B, U] padded with 0 (the CTC blank)
        if name in batch:
            rows = [np.asarray(t, dtype=np.int64) for t in batch[name]]
            lengths = np.array([len(t) for t in rows], dtype=np.int64)
            out[name] = torch.from_numpy(pad_stack(rows, dtype=np.int64) if rows else np.zeros((0, 0), np.int64))
            out[length] = torch.from_numpy(lengths)
    if C.MIX_LAMBDA in batch:
        out[C.MIX_LAMBDA] = torch.from_numpy(np.array(batch[C.MIX_LAMBDA], dtype=np.float32))
    target = batch.get(C.TARGET)
    if target is not None:
        t = np.asarray(target) if getattr(target, "dtype", None) != object else np.stack(list(target))
        out[C.TARGET] = torch.from_numpy(np.array(t))
    return out




def default_device() -> torch.device:
    """The Ray Train worker's device inside a training function, else CUDA if present, else CPU."""
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:  # noqa: BLE001 - not inside a Ray Train worker
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_batches(source, batch_size: int = 64, device: Union[str, torch.device, None] = None,
                  drop_last: bool = False, prefetch_batches: int = 2, ledger=None,
                  ) -> Iterator[Dict[str, object]]:
    """Iterate padded torch batches from a Dataset, a DataIterator (Ray Train's
    ``get_dataset_shard``) or a ``streaming_split`` piece.

    ``ledger`` (the pipeline's ledger actor, ``Pipeline.ledger``) receives per-shard delivered
    counts, so ``Pipeline.report()`` can reconcile read = delivered + quarantined.
    """
    from .ledger import DeliveryCounter  # Ray; collate needs none (the GPU box has no Ray)

    device = torch.device(device) if device is not None else default_device()
    counter = DeliveryCounter(ledger)
    pin = device.type == "cuda"
    try:
        for batch in source.iter_batches(batch_size=batch_size, batch_format="numpy",
                                         prefetch_batches=prefetch_batches, drop_last=drop_last):
            out = collate(batch)
            for name in C.DEVICE:
                if name in out:
                    t = out[name].pin_memory() if pin else out[name]
                    out[name] = t.to(device, non_blocking=pin)
            counter.add(out[C.SHARD])
            yield out
    finally:
        counter.flush()
