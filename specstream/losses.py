"""Losses for sequence targets that mixup has mixed (pure torch: no Ray, no I/O).

When the augmentation policy holds ``mixup``, a delivered batch carries, besides its own
``tokens`` [B, U] / ``token_length`` [B], the partner's transcript ``mix_tokens`` [B, U2] /
``mix_token_length`` [B] and the weight ``mix_lambda`` [B] (1.0 for a row that was not
mixed). The features of a mixed row are ``lam * own + (1 - lam) * partner``; the matching
loss is the same convex combination of the two transcripts' losses, per sample::

    loss_i = lam_i * L(output_i, own_i) + (1 - lam_i) * L(output_i, partner_i)

Both helpers take either the batch dict or explicit tensors::

    loss = mixed_ctc_loss(log_probs, out_lengths, batch)                 # the batch dict
    loss = mixed_ctc_loss(log_probs, out_lengths, tokens, token_length)  # plain CTC
    loss = mixed_ctc_loss(log_probs, out_lengths, tokens, token_length,
                          mix_lambda=lam, mix_tokens=t2, mix_token_length=n2)

Without the mix columns (no mixup in the policy) they are the plain losses:
``mixed_ctc_loss`` then equals ``torch.nn.functional.ctc_loss`` with the same reduction.

Reductions follow ``ctc_loss``: ``"none"`` gives the per-sample loss [B] (summed over the
target's tokens), ``"sum"`` their sum, ``"mean"`` the batch mean of each per-sample loss
divided by its transcript's length (own and partner terms each by their own length).
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["mixed_ctc_loss", "mixed_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


def _from_batch(tokens, token_length, mix_lambda, mix_tokens, mix_token_length, batch,
                names: Tuple[str, str], fn: str, reduction: str):
    """Check ``reduction``; resolve the explicit-tensor and batch-dict call forms into five values."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if isinstance(tokens, Mapping):
        if batch is not None:
            raise TypeError(f"{fn}: pass the batch dict once (positionally or as batch=)")
        batch, tokens = tokens, None
    if batch is not None:
        if tokens is not None or token_length is not None:
            raise TypeError(f"{fn}: pass either a batch dict or {names[0]}/{names[1]} tensors, not both")
        missing = [n for n in names if n not in batch]
        if missing:
            raise KeyError(f"{fn}: the batch has no {missing[0]!r} (keys: {sorted(batch)}); sequence targets "
                           f"need labels.tokenizer in the pipeline config")
        tokens, token_length = batch[names[0]], batch[names[1]]
        if mix_lambda is None and "mix_lambda" in batch:
            mix_lambda = batch["mix_lambda"]
            mix_tokens = batch.get("mix_" + names[0])
            mix_token_length = batch.get("mix_" + names[1])
    if tokens is None:
        raise TypeError(f"{fn}: missing targets: pass the batch dict or {names[0]} (and {names[1]})")
    if mix_lambda is not None and mix_tokens is None:
        raise ValueError(f"{fn}: mix_lambda given without mix_{names[0]} (the partner's targets)")
    return tokens, token_length, mix_lambda, mix_tokens, mix_token_length


def _check_lambda(lam: torch.Tensor, batch_size: int, fn: str) -> torch.Tensor:
    lam = torch.as_tensor(lam)
    if lam.dim() == 0:
        lam = lam.expand(batch_size)
    if lam.shape != (batch_size,):
        raise ValueError(f"{fn}: mix_lambda has shape {tuple(lam.shape)}, expected [{batch_size}]")
    if not lam.dtype.is_floating_point:
        raise ValueError(f"{fn}: mix_lambda must be a float tensor, got {lam.dtype}")
    if bool(((lam < 0) | (lam > 1) | torch.isnan(lam)).any()):
        raise ValueError(f"{fn}: mix_lambda must lie in [0, 1]; got values from {lam.min().item():.4g} "
                         f"to {lam.max().item():.4g}")
    return lam


def _reduce(own: torch.Tensor, other: Optional[torch.Tensor], lam: Optional[torch.Tensor],
            own_len: torch.Tensor, other_len: Optional[torch.Tensor], reduction: str,
            counted: Optional[torch.Tensor] = None) -> torch.Tensor:
    """own/other: per-sample summed losses [B]; other is 0 where lam == 1. ``counted``: the
    rows "mean" averages over (the labelled ones; default every row), 0 in the others."""
    if reduction == "mean":
        own = own / own_len.clamp(min=1).to(own.dtype)
        if other is not None:
            other = other / other_len.clamp(min=1).to(other.dtype)
    if other is None:
        per = own
    else:
        lam = lam.to(own.dtype)
        per = lam * own + (1 - lam) * other
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.mean() if counted is None else per.sum() / counted.sum().clamp(min=1).to(per.dtype)


def mixed_ctc_loss(log_probs: torch.Tensor, input_lengths: torch.Tensor, tokens=None,
                   token_length: Optional[torch.Tensor] = None, mix_lambda: Optional[torch.Tensor] = None,
                   mix_tokens: Optional[torch.Tensor] = None, mix_token_length: Optional[torch.Tensor] = None,
                   *, batch: Optional[Mapping] = None, blank: int = 0, reduction: str = "mean",
                   zero_infinity: bool = False, time_major: bool = False) -> torch.Tensor:
    """CTC loss with mixup over transcripts: ``lam * CTC(own) + (1 - lam) * CTC(partner)`` per sample.

    log_probs: [B, T, V] log-softmax outputs (``time_major=True``: [T, B, V], as
      ``F.ctc_loss`` takes them). input_lengths: [B] valid output frames per sample.
    tokens: [B, U] padded targets, or the batch dict (then ``tokens``, ``token_length`` and,
      when present, ``mix_lambda`` / ``mix_tokens`` / ``mix_token_length`` are read from it).
    token_length: [B]. When omitted with a tensor ``tokens``, each row's count of ids != blank.
    mix_lambda: [B] (or a scalar) in [0, 1]; mix_tokens [B, U2] and mix_token_length [B]:
      the partner's transcript. Rows with lam == 1 cost no partner term (not even an
      infinite one), so unmixed rows give exactly ``F.ctc_loss``.
    zero_infinity: as ``F.ctc_loss``; an infeasible partner transcript (longer than the
      row's output frames allow) is infinite otherwise.
    """
    fn = "mixed_ctc_loss"
    tokens, token_length, mix_lambda, mix_tokens, mix_token_length = _from_batch(
        tokens, token_length, mix_lambda, mix_tokens, mix_token_length, batch,
        ("tokens", "token_length"), fn, reduction)
    if log_probs.dim() != 3:
        raise ValueError(f"{fn}: log_probs must be 3-D ([B, T, V], or [T, B, V] with time_major=True), "
                         f"got shape {tuple(log_probs.shape)}")
    lp = log_probs if time_major else log_probs.transpose(0, 1)  # [T, B, V]
    T, B, V = lp.shape
    input_lengths = torch.as_tensor(input_lengths, device=lp.device).long()
    if input_lengths.shape != (B,):
        raise ValueError(f"{fn}: input_lengths has shape {tuple(input_lengths.shape)}, expected [{B}]")
    if bool((input_lengths > T).any()):
        raise ValueError(f"{fn}: an input length ({input_lengths.max().item()}) exceeds log_probs' {T} frames")

    def targets(t, n, what):
        t = torch.as_tensor(t, device=lp.device).long()
        if t.dim() != 2 or t.shape[0] != B:
            raise ValueError(f"{fn}: {what} must be [B={B}, U], got shape {tuple(t.shape)}")
        n = (t != blank).sum(1) if n is None else torch.as_tensor(n, device=lp.device).long()
        if n.shape != (B,):
            raise ValueError(f"{fn}: {what} lengths have shape {tuple(n.shape)}, expected [{B}]")
        if bool((n > t.shape[1]).any()):
            raise ValueError(f"{fn}: a {what} length exceeds the padded width {t.shape[1]}")
        if t.numel() and bool(((t < 0) | (t >= V)).any()):
            raise ValueError(f"{fn}: {what} hold ids outside [0, {V}) (V = log_probs' last dimension)")
        return t, n

    tokens, token_length = targets(tokens, token_length, "tokens")
    own = F.ctc_loss(lp, tokens, input_lengths, token_length, blank=blank, reduction="none",
                     zero_infinity=zero_infinity)
    if mix_lambda is None:
        return _reduce(own, None, None, token_length, None, reduction)

    lam = _check_lambda(mix_lambda, B, fn).to(lp.device)
    mix_tokens, mix_token_length = targets(mix_tokens, mix_token_length, "mix_tokens")
    other = torch.zeros_like(own)
    rows = torch.nonzero(lam < 1, as_tuple=False).flatten()
    if rows.numel():
        part = F.ctc_loss(lp[:, rows], mix_tokens[rows], input_lengths[rows], mix_token_length[rows],
                          blank=blank, reduction="none", zero_infinity=zero_infinity)
        other = other.index_copy(0, rows, part)
    return _reduce(own, other, lam, token_length, mix_token_length, reduction)


def mixed_cross_entropy(logits: torch.Tensor, targets=None, mix_lambda: Optional[torch.Tensor] = None,
                        mix_targets: Optional[torch.Tensor] = None, *, target_length: Optional[torch.Tensor] = None,
                        mix_target_length: Optional[torch.Tensor] = None, mix_logits: Optional[torch.Tensor] = None,
                        batch: Optional[Mapping] = None, pad_id: int = 0, label_smoothing: float = 0.0,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy with mixup: ``lam * CE(own) + (1 - lam) * CE(partner)`` per sample.

    Classification: logits [B, V], targets [B] class ids, mix_targets [B]. A class id of -1
      is "no label" (``labels.required: false``): the row costs 0 and the mean is over the
      labelled rows, as ``trainer.loss_fn``; it must not be mixed (mix_lambda 1).
    Sequences (seq2seq, teacher forcing): logits [B, U, V] scored against targets [B, U]
      (padding = ``pad_id``, or positions past ``target_length``). The partner term scores
      ``mix_logits`` [B, U2, V] against mix_targets [B, U2]: an autoregressive decoder
      must be run a second time, teacher-forced on the partner's tokens, to get them.
      Without ``mix_logits`` the partner is scored on ``logits`` (outputs that do not
      depend on the targets), which then need at least U2 positions.
    targets may be the batch dict: ``tokens`` / ``token_length`` / ``mix_lambda`` /
      ``mix_tokens`` / ``mix_token_length`` are read from it.
    Per sample the loss is summed over its tokens; ``"mean"`` divides each by its length
    and averages over the batch (as ``mixed_ctc_loss``), ``"sum"`` and ``"none"`` as there.
    """
    fn = "mixed_cross_entropy"
    targets, target_length, mix_lambda, mix_targets, mix_target_length = _from_batch(
        targets, target_length, mix_lambda, mix_targets, mix_target_length, batch,
        ("tokens", "token_length"), fn, reduction)
    B = logits.shape[0]
    V = logits.shape[-1]

    def score(lg, t, n, what):
        t = torch.as_tensor(t, device=lg.device).long()
        if lg.dim() == 2:  # classification: one class per sample
            if t.shape != (B,):
                raise ValueError(f"{fn}: {what} must be [B={B}] class ids for [B, V] logits, got {tuple(t.shape)}")
            if bool(((t < -1) | (t >= V)).any()):
                raise ValueError(f"{fn}: {what} hold class ids outside [0, {V}) (-1: no label)")
            has = t >= 0
            lg = torch.where(has[:, None], lg, torch.zeros_like(lg))  # nor its gradient, were it non-finite
            loss = F.cross_entropy(lg, t.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
            return torch.where(has, loss, torch.zeros_like(loss)), has.long()
        if lg.dim() != 3:
            raise ValueError(f"{fn}: logits must be [B, V] or [B, U, V], got shape {tuple(lg.shape)}")
        if t.dim() != 2 or t.shape[0] != B:
            raise ValueError(f"{fn}: {what} must be [B={B}, U], got shape {tuple(t.shape)}")
        U = t.shape[1]
        if lg.shape[1] < U:
            raise ValueError(f"{fn}: {what} are {U} tokens wide but the logits have only {lg.shape[1]} positions"
                             + ("; pass mix_logits from a decoder pass on the partner's tokens"
                                if what == "mix_targets" else ""))
        pos = torch.arange(U, device=lg.device)[None, :]
        valid = (t != pad_id) if n is None else pos < torch.as_tensor(n, device=lg.device).long()[:, None]
        if bool(((t < 0) | (t >= V))[valid].any()):
            raise ValueError(f"{fn}: {what} hold ids outside [0, {V})")
        tok = F.cross_entropy(lg[:, :U].reshape(-1, V), t.clamp(0, V - 1).reshape(-1), reduction="none",
                              label_smoothing=label_smoothing).view(B, U)
        return (tok * valid.to(tok.dtype)).sum(1), valid.sum(1)

    own, own_len = score(logits, targets, target_length, "targets")
    counted = own_len > 0 if logits.dim() == 2 else None  # classification: the labelled rows
    if mix_lambda is None:
        return _reduce(own, None, None, own_len, None, reduction, counted)
    lam = _check_lambda(mix_lambda, B, fn).to(logits.device)
    other_logits = logits if mix_logits is None else mix_logits
    if other_logits.shape[0] != B or other_logits.shape[-1] != V or other_logits.dim() != logits.dim():
        raise ValueError(f"{fn}: mix_logits has shape {tuple(other_logits.shape)}, expected [B={B}, U2, V={V}]")
    other, other_len = score(other_logits, mix_targets, mix_target_length, "mix_targets")
    if counted is not None and bool(((lam < 1) & ~(counted & (other_len > 0))).any()):
        raise ValueError(f"{fn}: a row without a label (class -1), or with an unlabelled partner, has "
                         f"mix_lambda < 1: mixup never mixes those")
    other = torch.where(lam < 1, other, torch.zeros_like(other))
    return _reduce(own, other, lam, own_len, other_len, reduction, counted)
