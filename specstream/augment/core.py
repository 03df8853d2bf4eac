"""The op contract, enforced here once for every op.

An op is a class with a ``name`` (subclassing registers it: no list to edit), a
``domain`` (``wave`` before the log-mel, ``filterbank``, or ``spec``), and two methods:

- ``draw(ctx, batch) -> params``: per-sample parameters from a :class:`Context` (a pure
  function of seed, epoch, sample key and the op's position; never a global RNG);
- ``transform(batch, params) -> batch``: the math, on the rows it is given.

:meth:`Op.apply` (what a policy calls) does the rest, the same way for every op: the
per-sample gate (``p``) is drawn and recorded with the parameters; with ``rows = "active"``
(the default) ``transform`` sees only the active rows, which are then written back (an op
never re-implements gating, and costs nothing on rows it does not touch); padding is set
back to 0 at the output lengths; frame targets are moved by the op's declared frame map
(``frame_source``). An op declares what it changes (``changes``: features, lengths,
targets, frames); the contract checks that it changed nothing else. Three kinds of op set
``rows = "all"`` and apply the recorded gate themselves, where gathering the active rows
would cost more than it saves or cannot work: mixing ops (a partner from the whole batch),
the masks (one fused pass over the batch: an inactive row's masks are empty) and VTLP (an
inactive row's filterbank is the plain one). The gate itself (``active``) is still drawn
and recorded here; that every op leaves its inactive rows as they came, whoever applies the
gate, is a registry-wide test. An op whose transform writes the
zero padding itself sets ``zero_padded`` (the zeroing pass is then skipped when every row is
active); one whose output is 0 past its lengths when its input was (a gain, a mix, a
filter from rest) sets ``keeps_zero_padding``, and the pass is skipped when the caller
vouches that the input was zero-padded (``apply(clean=True)``: a policy's waveform chain).
An op that changes only the features, moves no frames and keeps the zero padding may set
``in_place`` and write ``transform_rows(batch, params, rows)``: on a batch the caller owns
(a policy's chain after its first op) the active rows are then transformed where they
are, without the gathered copy and the write-back.

A batch is padded data [B, ..., T] with per-sample ``lengths``: log-mel features
[B, n_mels, frames] (:class:`Batch`) or waveforms [B, samples] (:class:`WaveBatch`).
A sample's output alone equals its output inside any padded batch (tested for every op).

Parameter ranges are checked at construction by :func:`check` / :func:`check_range`:
a :class:`~specstream.errors.ConfigError` naming op, key, value and the allowed range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Dict, FrozenSet, Optional, Type

import numpy as np
import torch

from ..functional.frames import move_frames, pad_to, zero_padding
# the op contract's names, one import for the ops' files: draws (draws.py), setting checks (checks.py)
from .checks import check, check_choice, check_number, check_range  # noqa: F401
from .draws import Context, _host, lerp, randint  # noqa: F401

Params = Dict[str, torch.Tensor]

REGISTRY: Dict[str, Type["Op"]] = {}
DOMAINS = ("wave", "filterbank", "spec")
CHANGES = frozenset({"features", "lengths", "targets", "frames"})


# ----------------------------------------------------------------------------- batches

@dataclass
class FeatureDomain:
    """What the spectrogram ops are applied to, for the ops that work in the power domain
    (gain, EQ, band-limiting, coloured noise, overlay): features = log(mel power + offset)
    (``floor: add``) or log(max(mel power, offset)) (``floor: clamp``), of |STFT| ** ``power``,
    natural log or dB (10 log10). ``mel`` (a :class:`~specstream.features.MelConfig`) lets
    noise colours follow the mel scale in use. The featurizer's own settings give it:
    :meth:`from_mel`."""

    power: float = 2.0
    log: str = "natural"  # natural | db
    offset: float = 1e-6
    floor: str = "add"  # add | clamp
    mel: Any = None

    @classmethod
    def from_mel(cls, cfg) -> "FeatureDomain":
        """The domain of the featurizer's log-mel *before* ``finalize`` (where the ops run:
        natural log; dB and normalisation come after augmentation)."""
        return cls(power=float(cfg.power), log="natural", offset=float(cfg.log_offset), floor=cfg.log_floor, mel=cfg)

    def _nat(self) -> float:  # natural-log units per feature unit
        return 1.0 if self.log == "natural" else math.log(10.0) / 10.0

    def to_power(self, x: torch.Tensor) -> torch.Tensor:
        """Mel power (|STFT| ** power through the filterbank) from features."""
        p = torch.exp(x * self._nat()) if self.log == "db" else torch.exp(x)
        return (p - self.offset).clamp(min=0) if self.floor == "add" else p

    def from_power(self, p: torch.Tensor) -> torch.Tensor:
        y = torch.log(p + self.offset) if self.floor == "add" else torch.log(p.clamp(min=self.offset))
        return y / self._nat() if self.log == "db" else y

    def scale(self, x: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
        """Features of the signal scaled by ``db`` (amplitude dB, broadcast against x): the
        mel power times 10 ** (db * power / 20), through the log floor (an exact shift
        where the power is far above the offset; silence stays at the floor)."""
        return self.from_power(self.to_power(x) * torch.exp(self.gain(db.to(x.dtype)) * self._nat()))

    def gain(self, db: torch.Tensor) -> torch.Tensor:
        """What a gain of ``db`` (on the signal's amplitude, as a waveform gain) adds to the
        features where the signal is far above the floor."""
        nat = db * (math.log(10.0) / 20.0) * self.power
        return nat / self._nat()


@dataclass
class _Rows:
    """Padded per-sample data with lengths; ``take``/``put`` move a subset of rows."""

    _data: ClassVar[str] = "features"

    @property
    def data(self) -> torch.Tensor:
        return getattr(self, self._data)

    def replace(self, **kw):
        return replace(self, **kw)

    def take(self, rows: torch.Tensor):
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.index_select(0, rows) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
        return type(self)(**kw)

    def put(self, rows: torch.Tensor, sub, inplace: bool = False) -> "_Rows":
        """A batch with rows ``rows`` from ``sub``, the others unchanged (the time axis grows
        to the longer of the two). ``inplace``: the data tensor (audio / features) belongs to
        the caller, who will not read it again: its rows are overwritten where it is, not
        copied first (the other fields, small, are always new tensors)."""
        kw = {}
        for f in fields(self):
            old, new = getattr(self, f.name), getattr(sub, f.name)
            if not isinstance(old, torch.Tensor) or old.dim() == 0:
                kw[f.name] = old
                continue
            if new is None:
                kw[f.name] = old
                continue
            given = old
            if f.name == self._data or f.name == "frame_targets":
                axis = -1 if f.name == self._data else 1
                n = max(old.shape[axis], new.shape[axis])
                old, new = _pad_axis(old, n, axis), _pad_axis(new, n, axis)
            if new.dtype != old.dtype:
                old = old.to(new.dtype) if new.dtype.is_floating_point else old
                new = new.to(old.dtype)
            if old is not given or (inplace and f.name == self._data):
                kw[f.name] = old.index_copy_(0, rows, new)  # a copy made above, or ours to write
            else:
                kw[f.name] = old.index_copy(0, rows, new)  # one fused copy + row write
        return type(self)(**kw)


def _pad_axis(x: torch.Tensor, n: int, axis: int) -> torch.Tensor:
    if axis == -1:
        return pad_to(x, n)
    if x.shape[axis] == n:
        return x
    pad = [0, 0] * (x.dim() - 1 - axis) + [0, n - x.shape[axis]]
    return torch.nn.functional.pad(x, pad)


@dataclass
class Batch(_Rows):
    """Log-mel features [B, F, T] with valid frames ``lengths``, class / soft / multi-hot
    ``targets`` and frame targets [B, T] or [B, T, C] that move with time-axis ops."""

    features: torch.Tensor
    lengths: torch.Tensor  # [B] int64, valid frames
    targets: Optional[torch.Tensor] = None
    frame_targets: Optional[torch.Tensor] = None
    domain: FeatureDomain = field(default_factory=FeatureDomain)
    # [B] bool: the rows that have a label, as the targets said when they entered the chain
    # (a mixup's soft output cannot tell "no label" from a label); None: read the targets
    labelled: Optional[torch.Tensor] = None


@dataclass
class WaveBatch(_Rows):
    """Waveforms [B, N] (0 past each sample's length) with ``lengths`` in samples."""

    _data: ClassVar[str] = "audio"
    audio: torch.Tensor
    lengths: torch.Tensor
    sample_rate: int
    targets: Optional[torch.Tensor] = None
    frame_targets: Optional[torch.Tensor] = None  # carried, not moved (Policy.featurize rescales them)


_NUMPY_TYPES = (torch.float32, torch.float64, torch.int64, torch.int32, torch.bool)


def _pick(v, rows: torch.Tensor, r: Optional[np.ndarray]):
    """Rows ``rows`` of a per-sample parameter (other values as they are); in numpy when the
    rows are known on the host (``r``) and the parameter is a host array numpy holds."""
    if not isinstance(v, torch.Tensor) or v.dim() == 0:
        return v
    if r is not None and v.is_cpu and v.dtype in _NUMPY_TYPES and not v.requires_grad:
        return torch.from_numpy(v.numpy()[r])
    return v.index_select(0, rows.to(v.device))


def import_families(package: str, path) -> None:
    """Import every module of an op-family package (``spec``, ``wave``), so that an op in a
    new family file registers itself without an edit to any list."""
    import importlib
    import pkgutil

    for m in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{m.name}")


# ----------------------------------------------------------------------------- the op contract

class Op:
    """Base class of every augmentation op (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    domain: ClassVar[str] = "spec"
    changes: ClassVar[FrozenSet[str]] = frozenset({"features"})
    rows: ClassVar[str] = "active"  # active: transform() sees only the active rows; all: the op gates itself
    # True: transform() writes 0 at and past every row's output length itself, whatever the
    # input held there, so the contract's zeroing pass is skipped when every row is active
    zero_padded: ClassVar[bool] = False
    # True: transform()'s output is 0 past every row's output length when its input was 0
    # past the input lengths; the zeroing pass is skipped when the caller vouches for a clean
    # input (apply(clean=True)). The registry-wide test checks the padding of every op
    # either way, with clean and with dirty input.
    keeps_zero_padding: ClassVar[bool] = False
    # True: transform_rows() is implemented (an op that changes only the features, moves no
    # frames and keeps the zero padding): on a batch the chain owns, the active rows are
    # transformed where they are, with no gathered copy to write back
    in_place: ClassVar[bool] = False
    # False: draw() reads nothing of the batch (its parameters come from the keyed uniforms
    # and the op's own settings alone). A policy then draws the op's parameters together with
    # the other such ops before its chain runs (the same values: draws are keyed by slot,
    # not by when they are made), while the interpreter's code for them is in the caches.
    draw_reads_batch: ClassVar[bool] = True

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__ and cls.name:
            other = REGISTRY.get(cls.name)
            if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
                raise TypeError(f"augmentation op name {cls.name!r} is taken by {other.__module__}.{other.__qualname__}")
            REGISTRY[cls.name] = cls
        if cls.domain not in DOMAINS or not cls.changes <= CHANGES or cls.rows not in ("active", "all"):
            raise TypeError(f"{cls.__qualname__}: bad op declaration (domain, changes or rows)")
        if cls.in_place and (cls.changes != {"features"} or not cls.keeps_zero_padding or cls.rows != "active"
                             or cls.frame_source is not Op.frame_source):
            raise TypeError(f"{cls.__qualname__}: in_place needs an op that changes only the features, keeps "
                            f"the zero padding, is gated by the contract and moves no frames")

    def __init__(self, p: float = 1.0):
        self.p = check_number(self.name, "p", p, 0.0, 1.0)

    # -- what a subclass writes
    def draw(self, ctx: Context, batch) -> Params:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, batch, params: Params):  # pragma: no cover - abstract
        raise NotImplementedError

    def transform_rows(self, batch, params: Params, rows: torch.Tensor):  # pragma: no cover - abstract
        """For ``in_place`` ops: ``transform`` of rows ``rows`` (distinct, int64; ``params``
        hold those rows' values only), written into ``batch``'s data tensor where they are
        (the caller owns it); the other rows stay as they are. Returns the batch."""
        raise NotImplementedError

    def frame_source(self, batch, params: Params, out) -> Optional[torch.Tensor]:
        """For ops that move content in time: [b, T_out] integer source frame of every output
        frame of ``out`` (frame targets are moved by it). None: frames stay where they are."""
        return None

    # -- the contract
    def sample(self, ctx: Context, batch) -> Params:
        """Draw the gate (``active``: U < p) and the parameters; both are recorded."""
        if ctx.host_draws():  # the gate in numpy (the same comparison in float32)
            active = torch.from_numpy(ctx.uniform_np(1)[:, 0] < np.float32(self.p))
        else:
            active = ctx.uniform(1)[:, 0] < self.p
        params = self.draw(ctx, batch)
        params["active"] = active
        return params

    def apply(self, batch, params: Params, owned: bool = False, clean: bool = False):
        """Apply recorded parameters: gate, transform, write back, zero padding, move frames.

        ``owned``: the caller hands over the batch's data tensor (a policy passes the output
        of its previous op, which nothing else holds): the active rows' results and the
        padding are then written into it rather than into a copy. The caller's own input
        is never written. ``clean``: the caller vouches that the batch is 0 past its lengths
        (a policy's waveform chain, zero-padded on entry): the output of an op that
        ``keeps_zero_padding`` (or is ``zero_padded``) then needs no zeroing pass, whichever
        rows were active."""
        params = {k: v for k, v in params.items() if k != "__name__"}
        active = params["active"]
        if self.rows == "all":
            out = self._checked(batch, self.transform(batch, params))
        else:
            host = active.is_cpu
            n = int(np.count_nonzero(active.numpy())) if host else int(active.sum())
            if n == 0:
                return batch
            if n == active.numel():
                out = self._moved(batch, params, self._checked(batch, self.transform(batch, params)))
                if self.zero_padded or (clean and self.keeps_zero_padding):
                    return out
            else:
                r = np.flatnonzero(active.numpy()) if host else None
                rows = torch.from_numpy(r) if host else active.nonzero()[:, 0]
                sp = {k: _pick(v, rows, r) for k, v in params.items()}
                if self.in_place and owned and batch.data.is_contiguous():
                    out = self._checked(batch, self.transform_rows(batch, sp, rows))
                    if out.data is not batch.data:
                        raise RuntimeError(f"op {self.name!r}: transform_rows must write the batch's own data")
                else:
                    sub = batch.take(rows)
                    out = batch.put(rows, self._moved(sub, sp, self._checked(sub, self.transform(sub, sp))),
                                    inplace=owned)
                if clean and (self.zero_padded or self.keeps_zero_padding):
                    return out  # the inactive rows as they came: 0 past their lengths
        same = out.data.untyped_storage().data_ptr() == batch.data.untyped_storage().data_ptr()
        fresh = owned if same else out.data._base is None  # ours: a new tensor, or the one handed over
        data = zero_padding(out.data, out.lengths, inplace=fresh)
        return out.replace(**{out._data: data})

    def _checked(self, before, after):
        for name, what in (("lengths", "lengths"), ("targets", "targets"), ("frame_targets", "frames")):
            if what not in self.changes and getattr(after, name) is not getattr(before, name):
                raise RuntimeError(f"op {self.name!r} changed {name} without declaring it (changes={sorted(self.changes)})")
        return after

    def _moved(self, before, params, after):
        ft = before.frame_targets
        if ft is None or "frames" in self.changes:
            return after
        src = self.frame_source(before, params, after)
        if src is None:
            return after
        return after.replace(frame_targets=move_frames(ft, src, after.lengths))

    def config(self) -> dict:
        """The op's constructor arguments (for logging and to_dict)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
