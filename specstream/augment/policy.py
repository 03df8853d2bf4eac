"""Policies: ordered chains of ops with per-op probabilities (presets: :mod:`.presets`, logged
parameters: :mod:`.replay`, test-time augmentation: :mod:`.tta`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..functional import cpu_kernels
from ..functional.frames import move_frames, zero_padded
from ..functional.random import DrawTable, host_draws, key_ids as _key_ids, keyed_prefix
from ..errors import ConfigError
from .core import DOMAINS, REGISTRY, Batch, Context, FeatureDomain, Op, WaveBatch
from .spec import MaskOp, Mixup, Vtlp, apply_masks
from .spec.mixing import labelled
from .wave import BankLoader, BankOp
from . import replay

OPS = REGISTRY  # name -> op class, filled by subclassing



@dataclass
class AugmentResult:
    features: torch.Tensor
    lengths: torch.Tensor
    targets: Optional[torch.Tensor] = None
    params: List[Dict[str, torch.Tensor]] = field(default_factory=list)  # one dict per op
    frame_targets: Optional[torch.Tensor] = None

    def params_for(self, i: int, max_values: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
        """Sample i's parameters, as plain Python values keyed '<pos>:<op name>' (for logs).
        ``max_values`` leaves out per-element fields (noise, frame counts) larger than that."""
        out = {}
        for pos, (name, p) in enumerate(self._named()):
            out[f"{pos}:{name}"] = {k: v[i].tolist() for k, v in p.items()
                                    if max_values is None or v[i].numel() <= max_values}
        return out

    def params_rows(self, max_values: Optional[int] = None) -> List[Dict[str, Dict[str, Any]]]:
        """``[params_for(i) for every row]``, each field read off its device once for the
        whole batch (per-row reads of device tensors are a copy and a sync each)."""
        rows = len(self.lengths)
        if rows == 0:
            return []
        fields = []
        for pos, (name, p) in enumerate(self._named()):
            fields.append((f"{pos}:{name}", {k: v.tolist() for k, v in p.items()
                                             if max_values is None or v[0].numel() <= max_values}))
        return [{op: {k: v[i] for k, v in kept.items()} for op, kept in fields} for i in range(rows)]

    def _named(self):
        return [(p.get("__name__", "op"), {k: v for k, v in p.items() if k != "__name__"})
                for p in self.params]


class Policy:
    """An ordered chain of ops. ``policy(features, lengths, key_ids=..., seed=, epoch=)``
    samples each op's parameters (a pure function of seed, epoch, sample key and the op's
    position) and applies them in order; ``policy.apply(..., params=out.params)`` replays
    them exactly.

    A chain may start with waveform ops (gain, noise, reverb, speed...) and one filterbank
    op (VTLP) before the spectrogram ops: run those with :meth:`featurize`, which applies
    the waveform ops, computes the log-mel and then the spectrogram ops."""

    def __init__(self, ops: Sequence[Op], num_classes: Optional[int] = None,
                 domain: Optional[FeatureDomain] = None):
        self.ops = list(ops)
        self.num_classes = num_classes
        self.domain = domain or FeatureDomain()  # of the features the spectrogram ops see
        for op in self.ops:  # mixup needs the class count to turn class indices into one-hots
            if isinstance(op, Mixup) and op.num_classes is None:
                op.num_classes = num_classes
        ranks = [DOMAINS.index(op.domain) for op in self.ops]
        for i in range(1, len(ranks)):
            if ranks[i] < ranks[i - 1]:
                raise ConfigError(f"augment.ops[{i}] ({self.ops[i].name}): {self.ops[i].domain} ops must come "
                                 f"before {self.ops[i - 1].domain} ops (order: waveform, filterbank, spectrogram)")
        if ranks.count(1) > 1:
            raise ConfigError("augment: at most one filterbank op (vtlp)")
        self._wave_end = ranks.count(0)
        self._spec_start = self._wave_end + ranks.count(1)
        self._rates_checked: set = set()  # sample rates check() has passed

    @property
    def has_wave_ops(self) -> bool:
        return self._spec_start > 0

    def check(self, sample_rate: int) -> "Policy":
        """Settings that depend on the sample rate (a VTLP bend below Nyquist): a ConfigError
        now rather than inside a worker. A rate that passed is not checked again (the ops'
        settings do not change)."""
        if sample_rate in self._rates_checked:
            return self
        for op in self.ops:
            if isinstance(op, Vtlp):
                op.boundary(sample_rate)
            elif hasattr(op, "check_rate"):
                op.check_rate(sample_rate)
        self._rates_checked.add(sample_rate)
        return self

    def prepare(self, device) -> "Policy":
        """Once per process, so that the first batch does not wait for it: on the CPU, numba,
        its threading layer and the first fused kernel (:mod:`~specstream.functional.cpu_kernels`;
        every op's draws use them). The other kernels load from numba's cache on first use."""
        if torch.device(device).type == "cpu" and self.ops:
            cpu_kernels.available()
        return self

    def bank_ops(self) -> List[BankOp]:
        return [op for op in self.ops if isinstance(op, BankOp)]

    def bind_banks(self, loader: BankLoader) -> "Policy":
        """Load the banks the ops name (noise, babble, RIRs) through ``loader(source)``."""
        for op in self.bank_ops():
            op.bind(loader)
        return self

    def __len__(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        return f"Policy({self.ops!r})"

    @staticmethod
    def _ids(keys, key_ids, device) -> tuple:
        """(key ids as given: host or device, the batch's device)."""
        if key_ids is None:
            if keys is None:
                raise ValueError("policy needs keys or key_ids: parameters are a function of the sample key")
            key_ids = torch.from_numpy(_key_ids([str(k) for k in keys]))
        return torch.as_tensor(key_ids, dtype=torch.int64), torch.device(device)

    def _run(self, batch: Batch, param_source, start: int = 0, caller: Optional[torch.Tensor] = None) -> tuple:
        """Apply the spectrogram ops from ``start`` on; ``param_source(slot, op, batch)``
        gives each op's params. A run of consecutive mask ops with the same fill is one
        masked write, the fill taken from the features as they enter the run. ``caller``:
        the caller's features, never written (every later tensor is the chain's own)."""
        keep = set() if caller is None else {_storage(caller)}
        if batch.targets is not None and batch.labelled is None and \
                any("targets" in op.changes for op in self.ops[start:]):
            # which rows have a label is fixed here: an op that mixes targets (mixup's soft
            # rows) may leave a row that no later op can tell apart from "no label"
            batch = batch.replace(labelled=labelled(batch.targets, batch.features.shape[0], batch.features.device))

        def owned(b: Batch) -> bool:  # the features are the chain's own, not the caller's
            return _storage(b.features) not in keep

        all_params = []
        pending, pending_fill = [], None
        for slot, op in enumerate(self.ops[start:], start):
            params = param_source(slot, op, batch)
            all_params.append(params)
            if isinstance(op, MaskOp):
                if pending and op.fill != pending_fill:
                    batch = apply_masks(batch, pending, pending_fill, owned=owned(batch))
                    pending = []
                pending.append(op.mask_parts(batch, params))
                pending_fill = op.fill
                continue
            if pending:
                batch = apply_masks(batch, pending, pending_fill, owned=owned(batch))
                pending = []
            batch = op.apply(batch, params, owned=owned(batch))
        if pending:
            batch = apply_masks(batch, pending, pending_fill, owned=owned(batch))
        return batch, all_params

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor, keys=None, key_ids=None,
                 targets: Optional[torch.Tensor] = None, frame_targets: Optional[torch.Tensor] = None,
                 seed: int = 0, epoch: int = 0) -> AugmentResult:
        if self.has_wave_ops:
            raise ValueError("this policy has waveform/filterbank ops: call featurize(wave, ...)")
        ids = self._ids(keys, key_ids, features.device)
        lengths = lengths.to(features.device).to(torch.int64)
        batch, all_params = self._run(Batch(features, lengths, targets, frame_targets, self.domain),
                                      self._drawer(ids, seed, epoch), caller=features)
        return AugmentResult(batch.features, batch.lengths, batch.targets, all_params, batch.frame_targets)

    def _drawer(self, ids, seed, epoch):
        """Each op's draws: hashed on the host from one shared prefix (see Context)."""
        ids, device = ids
        ep = epoch.cpu() if isinstance(epoch, torch.Tensor) else int(epoch)
        prefix = keyed_prefix(int(seed), ep, ids.cpu())  # the words every op's draws share, hashed once
        flat = np.ascontiguousarray(prefix.numpy().reshape(-1), dtype=np.int64)
        ids = ids.to(device, non_blocking=True)
        device = torch.device(device)
        table = DrawTable(flat, len(self.ops)) if device.type == "cpu" and host_draws() else None

        def draw(slot, op, batch):
            ctx = Context(ids, int(seed), ep, slot, prefix=prefix, device=device, flat=flat, table=table)
            params = op.sample(ctx, batch)
            params["__name__"] = op.name
            return params

        return draw

    def featurize(self, wave: torch.Tensor, num_samples: torch.Tensor, logmel, sample_rate: int,
                  keys=None, key_ids=None, targets: Optional[torch.Tensor] = None, seed: int = 0, epoch=0,
                  params: Optional[List[Dict[str, torch.Tensor]]] = None,
                  frame_targets: Optional[torch.Tensor] = None) -> AugmentResult:
        """Waveforms [B, N] with lengths in samples -> waveform ops -> log-mel (``logmel``,
        a :class:`specstream.features.LogMel`, with the VTLP filterbanks when the chain has
        one) -> spectrogram ops. ``params`` replays recorded parameters instead of drawing.

        ``frame_targets`` ([B, T] or [B, T, C], on the frames of the clean log-mel) follow the
        content: through speed/tempo (output frame j takes the label of input frame
        round(j * factor)) and then through the spectrogram ops' time warps and stretches."""
        device = wave.device
        if params is not None and len(params) != len(self.ops):
            raise ValueError(f"params hold {len(params)} ops, the policy has {len(self.ops)}")
        if params is None:
            draw = self._drawer(self._ids(keys, key_ids, device), seed, epoch)
        else:
            def draw(slot, op, batch):
                return params[slot]
        recorded = []
        self.check(sample_rate)
        num_samples = num_samples.to(device).to(torch.int64)
        # waveform ops measure power over whole rows: the batch contract (0 past each length) must hold
        wb = WaveBatch(zero_padded(wave, num_samples), num_samples, int(sample_rate), targets)
        # input time per output time, for the frame targets (when there are any)
        scale = None if frame_targets is None else torch.ones(wave.shape[0], dtype=torch.float64, device=device)
        # the leading ops whose draws read nothing of the batch: drawn together first
        early = {}
        for slot in range(self._spec_start if params is None else 0):
            if self.ops[slot].draw_reads_batch:
                break
            early[slot] = draw(slot, self.ops[slot], wb)
        for slot in range(self._wave_end):
            op = self.ops[slot]
            p = early.pop(slot) if slot in early else draw(slot, op, wb)
            recorded.append(p)
            # the caller's waveforms: never written; the chain's batch: 0 past its lengths from
            # the entry on (zero_padded above, then every op's contract)
            wb = op.apply(wb, p, owned=_storage(wb.audio) != _storage(wave), clean=True)
            if scale is not None:
                scale = scale * op.time_factor(p).to(device=device, dtype=torch.float64)
        fbanks = None
        for slot in range(self._wave_end, self._spec_start):
            op = self.ops[slot]
            p = early.pop(slot) if slot in early else draw(slot, op, wb)
            recorded.append(p)
            fbanks = op.filterbanks(logmel.cfg, p, pairs=True).to(wave.dtype)
        clean_frames = logmel.cfg.num_frames(num_samples.to(device).to(torch.int64))
        feats, frames = logmel(wb.audio, wb.lengths, fbanks=fbanks)
        if frame_targets is not None:
            frame_targets = _rescale_frames(frame_targets.to(device), scale, frames, feats.shape[-1], clean_frames)
        domain = FeatureDomain.from_mel(logmel.cfg)
        batch, spec_params = self._run(Batch(feats, frames, wb.targets, frame_targets, domain), draw,
                                       start=self._spec_start)
        return AugmentResult(batch.features, batch.lengths, batch.targets, recorded + spec_params,
                             batch.frame_targets)

    def apply(self, features: torch.Tensor, lengths: torch.Tensor, params: List[Dict[str, torch.Tensor]],
              targets: Optional[torch.Tensor] = None, frame_targets: Optional[torch.Tensor] = None
              ) -> AugmentResult:
        """Replay recorded parameters (e.g. from a log, or on aligned targets)."""
        if self.has_wave_ops:
            raise ValueError("this policy has waveform/filterbank ops: replay with featurize(..., params=)")
        if len(params) != len(self.ops):
            raise ValueError(f"params hold {len(params)} ops, the policy has {len(self.ops)}")
        for op, p in zip(self.ops, params):
            if p.get("__name__", op.name) != op.name:
                raise ValueError(f"params for {p.get('__name__')!r} given to op {op.name!r}")
        lengths = lengths.to(features.device).to(torch.int64)
        batch = Batch(features, lengths, targets, frame_targets, self.domain)
        batch, _ = self._run(batch, lambda slot, op, b: params[slot], caller=features)
        return AugmentResult(batch.features, batch.lengths, batch.targets, list(params), batch.frame_targets)

    def to_dict(self) -> Dict[str, Any]:
        return {"ops": [{"op": op.name, **copy.deepcopy(op.config())} for op in self.ops]}

    # logged per-row records -> params (specstream.augment.replay)
    params_from_rows = staticmethod(replay.params_from_rows)
    replay_set = staticmethod(replay.replay_set)

    def replay_rows(self, rows, features: torch.Tensor, lengths: torch.Tensor, keys=None, key_ids=None,
                    **kw) -> "AugmentResult":
        """Replay logged per-row parameters on a spectrogram batch (:meth:`apply`); ``keys``
        as in :meth:`params_from_rows` (a subset of a batch with mixing ops)."""
        params = self.params_from_rows(rows, features.device, keys=keys, key_ids=key_ids)
        return self.apply(features, lengths, params, **kw)

    @classmethod
    def from_dict(cls, spec: Union[Dict[str, Any], Sequence[Dict[str, Any]]],
                  num_classes: Optional[int] = None) -> "Policy":
        """``{"ops": [{"op": "freq_mask", "max_width": 27, "count": 2, "p": 1.0}, ...]}``,
        a bare list of such dicts, or ``{"preset": "LD"}`` (optionally with more ``ops``
        appended after the preset's)."""
        if isinstance(spec, dict):
            unknown = set(spec) - {"ops", "preset"}
            if unknown:
                raise ConfigError(f"augment: unknown key {sorted(unknown)[0]!r} (use 'preset' and/or 'ops')")
            from .presets import preset

            ops: List[Op] = list(preset(spec["preset"]).ops) if spec.get("preset") else []
            items = spec.get("ops") or []
        else:
            ops, items = [], list(spec)
        for n, item in enumerate(items):
            if not isinstance(item, dict) or "op" not in item:
                raise ConfigError(f"augment.ops[{n}]: expected a mapping with an 'op' name")
            kw = dict(item)
            name = kw.pop("op")
            if name not in OPS:
                raise ConfigError(f"augment.ops[{n}]: unknown op {name!r} (known: {', '.join(sorted(OPS))})")
            for k, v in kw.items():
                if isinstance(v, list):
                    kw[k] = tuple(v)
            try:
                ops.append(OPS[name](**kw))
            except TypeError as e:
                raise ConfigError(f"augment.ops[{n}] ({name}): {e}") from None
            except ValueError as e:  # ConfigError from the op's own checks: say where it is
                raise type(e)(f"augment.ops[{n}]: {e}") from None
        return cls(ops, num_classes=num_classes)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _rescale_frames(ft: torch.Tensor, scale: torch.Tensor, frames: torch.Tensor, T: int,
                    clean_frames: torch.Tensor) -> torch.Tensor:
    """Frame targets after a change of time scale: output frame j takes input frame
    round(j * scale), clamped to the sample's *own* clean frames (not the batch's width: a
    sample's labels must not depend on its padding), zero past each sample's new frames."""
    j = torch.arange(T, device=ft.device, dtype=torch.float64)[None, :]
    src = torch.round(j * scale[:, None]).to(torch.int64)
    src = torch.minimum(src, (clean_frames - 1).clamp(min=0)[:, None])
    return move_frames(ft, src, frames)
