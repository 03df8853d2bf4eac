"""Pipeline stages as plain callables on dict-of-arrays batches.

They know nothing of Ray: the pipeline hands them to ``map_batches``; tests (and a GPU box
without Ray) call them directly. A stage never raises on bad data: it passes each bad
sample to its quarantine ``sink`` (a callable taking a list of entries) with a reason, and
returns the good ones.
"""
from __future__ import annotations

import json
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..augment import FeatureDomain, build_policy
from ..augment.random import key_ids as make_key_ids
from ..augment.random import uniform
from ..config import PipelineConfig, load_config
from ..features import LogMel, finalize
from ..io.audio import AudioError, Resampler, decode_audio
from ..io.banks import cached_loader
from ..io.shards import Storage
from ..io.samples import quarantine_entry
from ..labels import LabelError, LabelVocab, encode_target, frame_matrix, label_of, segments_of
from ..tokenizers import build_tokenizer
from . import columns as C
from .layout import Layout

Sink = Callable[[List[dict]], None]
Batch = Dict[str, np.ndarray]

# op slots of the counter-based RNG used outside the augmentation policy
CROP_OP = 1_000_001


def _names(batch) -> list:
    return list(batch.column_names) if hasattr(batch, "column_names") else list(batch)


def _column(batch, name) -> list:
    """A column of a pyarrow Table or a dict-of-arrays batch, as a Python list."""
    col = batch[name]
    if hasattr(col, "to_pylist"):
        return col.to_pylist()
    return list(col)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_retained = False


def retain_freed_memory() -> bool:
    """Keep this process's freed heap memory for the next batch (glibc: mallopt
    M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB); once per process, not undone. True
    when applied. The pipeline calls it in the Ray worker processes that featurize
    (``actors.retain_freed_memory``), never in the caller's process.

    With glibc's defaults a featurize batch's big tensors (STFT frames, spectra, the
    augmented waveforms) are handed back to the OS when freed and faulted in page by page
    when the next batch allocates them again; on the CPU that is most of the log-mel's time.
    Blocks over 32 MiB (glibc's ceiling for the threshold) still come from mmap. The price:
    up to 1 GiB of freed heap per malloc arena stays resident."""
    global _retained
    if _retained:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc
        return False
    _retained = ok
    return ok


def vocab_from_config(cfg: PipelineConfig) -> Optional[LabelVocab]:
    """The class vocabulary (None with sequence targets: the tokenizer is their vocabulary)."""
    lab = cfg.labels
    if lab.tokenizer is not None:
        return None
    if lab.vocab is not None:
        return LabelVocab(lab.vocab)
    if lab.vocab_file is not None:
        return LabelVocab.from_file(lab.vocab_file)
    return LabelVocab(num_classes=lab.num_classes)


class DecodeStage:
    """Arrow rows of audio bytes -> mono float32 waveforms at the target rate + targets.

    Output columns: ``key``, ``shard``, ``key_id`` (int64), ``audio`` ([B, N] float32 in
    fixed mode; one 1-D array per row in full mode), ``num_samples`` (int64, samples of
    signal before padding), ``target`` (int64 class, or [B, C] float32 multi-hot) or, with
    ``labels.tokenizer``, ``tokens`` (one int64 array per row), and with
    ``labels.frame_field`` ``segments`` (JSON, times relative to the kept audio).
    """

    def __init__(self, config, sink: Optional[Sink] = None):
        self.cfg = load_config(config)
        self.sink = sink
        self.vocab = vocab_from_config(self.cfg)
        self.tokenizer = build_tokenizer(self.cfg.labels.tokenizer) if self.cfg.labels.tokenizer else None
        self._resample = Resampler(self.cfg.decode.sample_rate)
        self.layout = Layout.of(self.cfg)

    def _crop_window(self, u: float):
        """(sr, frames) -> (start, n): a clip_seconds window placed by the crop policy
        (``u`` in [0, 1) is the sample's own uniform draw for ``random``)."""
        d = self.cfg.decode

        def window(sr: int, frames: int):
            n = int(round(d.clip_seconds * sr))
            spare = max(0, frames - n)
            start = {"start": 0, "center": spare // 2, "random": int(spare * u)}[d.crop]
            return start, n

        return window

    def __call__(self, batch) -> Batch:
        t0 = time.perf_counter()
        out = self._decode(batch)
        _stats(self.sink, "decode", len(out[C.KEY]), float(np.sum(out[C.NUM_SAMPLES])) / self.cfg.decode.sample_rate,
               time.perf_counter() - t0)
        return out

    def _decode(self, batch) -> Batch:
        d, lab = self.cfg.decode, self.cfg.labels
        keys = _column(batch, C.KEY)
        shards = _column(batch, C.SHARD)
        audio = _column(batch, C.AUDIO)
        cls = _column(batch, C.CLS)
        jsn = _column(batch, C.JSON)
        txt = _column(batch, C.TXT)
        reads = _column(batch, C.READ_ID) if C.READ_ID in _names(batch) else None
        ids = make_key_ids(keys)
        epochs = (np.asarray(_column(batch, C.EPOCH), dtype=np.int64) if C.EPOCH in _names(batch)
                  else np.full(len(keys), self.cfg.epoch, dtype=np.int64))
        crop_u = None
        if d.mode == "fixed" and d.crop == "random":
            crop_u = uniform(self.cfg.seed, torch.from_numpy(epochs), torch.from_numpy(ids), CROP_OP)[:, 0].numpy()

        good, waves, lengths, targets, bad, segments = [], [], [], [], [], []
        for i, key in enumerate(keys):
            try:
                target = None
                try:
                    value = label_of(lab.field, cls[i], jsn[i], txt[i])
                    if self.tokenizer is not None:
                        target = np.asarray(self.tokenizer.encode(str(value)), dtype=np.int64)
                    else:
                        target = encode_target(self.vocab, value, lab.multi_label)
                except LabelError:
                    if lab.required:
                        raise
                    if self.tokenizer is not None:
                        target = np.zeros(0, np.int64)  # no transcript: no tokens
                    else:
                        # "no label": -1 (multi-label: a row of -1, not the zeros of "no class present")
                        target = np.full(len(self.vocab), -1.0, np.float32) if lab.multi_label else -1
                segs = (segments_of(lab.frame_field, jsn[i], self.vocab) if lab.frame_field is not None
                        else None)
                crop_start = [0.0]
                if d.mode == "fixed":
                    base = self._crop_window(crop_u[i] if crop_u is not None else 0.0)

                    def window(sr, frames, base=base, crop_start=crop_start):
                        start, n = base(sr, frames)
                        crop_start[0] = start / sr
                        return start, n

                    x, sr = decode_audio(audio[i], d.max_seconds, window=window)
                else:
                    x, sr = decode_audio(audio[i], max_seconds=d.max_seconds)
                x = self._resample(x, sr)
            except (AudioError, LabelError) as e:
                entry = quarantine_entry(shards[i], key, "decode", str(e))
                if reads is not None:
                    entry["read"] = reads[i]  # the quarantine entry's read id (ledger field)
                bad.append(entry)
                continue
            if segs is not None:  # segment times relative to the kept audio's first sample
                segments.append(json.dumps([[a - crop_start[0], b - crop_start[0], c] for a, b, c in segs]))
            good.append(i)
            waves.append(x)
            lengths.append(self.layout.kept(len(x)))
            targets.append(target)
        if bad and self.sink is not None:
            self.sink(bad)

        out: Batch = {
            C.KEY: np.array([keys[i] for i in good], dtype=object),
            C.SHARD: np.array([shards[i] for i in good], dtype=object),
            C.KEY_ID: ids[good],
            C.EPOCH: epochs[good],
            C.NUM_SAMPLES: np.asarray(lengths, dtype=np.int64),
        }
        if C.INDEX in _names(batch):  # the sample's ordinal in its shard: what a stream state records
            index = _column(batch, C.INDEX)
            out[C.INDEX] = np.array([-1 if index[i] is None else index[i] for i in good], dtype=np.int64)
        out[C.AUDIO] = self.layout.audio_column(waves)
        if self.tokenizer is not None:
            tok = np.empty(len(targets), dtype=object)
            tok[:] = targets
            out[C.TOKENS] = tok
        elif lab.multi_label:
            out[C.TARGET] = (np.stack(targets) if targets
                             else np.zeros((0, len(self.vocab)), np.float32))
        else:
            out[C.TARGET] = np.asarray(targets, dtype=np.int64)
        if lab.frame_field is not None:
            out[C.SEGMENTS] = np.array(segments, dtype=object)  # JSON [[start_s, end_s, class], ...]
        return out


def _stats(sink, stage: str, samples: int, audio_s: float, busy_s: float) -> None:
    """A stage's work figures to its sink, when the sink takes them (the pipeline's does)."""
    record = getattr(sink, "stats", None)
    if record is not None:
        record(stage, samples, audio_s, busy_s)


def pad_stack(rows, length_axis: int = -1, dtype=np.float32) -> np.ndarray:
    """Stack arrays that differ only along ``length_axis`` into one zero-padded array."""
    if isinstance(rows, np.ndarray) and rows.dtype != object:
        return rows
    rows = list(rows)
    if not rows:
        return np.zeros((0,), dtype=dtype)
    longest = max(r.shape[length_axis] for r in rows)
    shape = list(rows[0].shape)
    shape[length_axis] = longest
    out = np.zeros((len(rows), *shape), dtype=dtype)
    for i, r in enumerate(rows):
        idx = [i] + [slice(None)] * r.ndim
        idx[length_axis if length_axis >= 0 else r.ndim + 1 + length_axis] = slice(0, r.shape[length_axis])
        out[tuple(idx)] = r
    return out


def _tensor(a, device, dtype=None) -> torch.Tensor:
    """numpy (possibly read-only, as Ray hands it out) -> tensor on ``device``."""
    a = np.asarray(a, dtype=dtype)
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a).to(device, non_blocking=True)


def resolve_device(requested: Optional[str] = None) -> torch.device:
    """The requested device, else CUDA when this process can see a GPU, else CPU.

    Under Ray, an actor started with ``num_gpus`` sees exactly its GPU(s) through
    CUDA_VISIBLE_DEVICES, so ``cuda`` is that GPU.
    """
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def storage_of(cfg: PipelineConfig, source=None) -> Storage:
    """The Storage of ``source`` (a SourceConfig; default: the config's first source)."""
    s = cfg.source if source is None else source
    return Storage(endpoint_url=s.endpoint_url, region=s.region, buffer_size=s.buffer_mb << 20,
                   retry_budget_s=s.retry_budget_s, retry_backoff=s.retry_backoff,
                   retry_backoff_max=s.retry_backoff_max, read_retries=s.read_retries)


class FeaturizeStage:
    """Waveforms -> waveform augmentation -> log-mel (VTLP filterbanks) -> spectrogram
    augmentation -> dB / normalisation -> rows, on the actor's device.

    Banks the policy names (noise, babble, RIRs) are loaded once per process, when the
    stage is built, and kept on its device.

    For ``map_batches(FeaturizeStage, compute=ActorPoolStrategy(...), num_gpus=...)``. Output
    columns: ``key``, ``shard``, ``features`` ([B, n_mels, T] float32; in full mode one
    [n_mels, T_i] array per row, trimmed to its length), ``length`` (frames), ``target``,
    and with ``labels.frame_field`` ``frame_target`` ([B, T, C] multi-hot, moved by the
    time ops like the features; [T_i, C] per row in full mode).
    """

    def __init__(self, config, sink: Optional[Sink] = None, device: Optional[str] = None):
        self.cfg = load_config(config)
        self.sink = sink
        self.device = resolve_device(device or self.cfg.actors.device)
        self.logmel = LogMel(self.cfg.features).to(self.device)
        self.layout = Layout.of(self.cfg)
        vocab = vocab_from_config(self.cfg)
        num_classes = None if vocab is None else len(vocab)
        self.policy = build_policy(self.cfg.augment, num_classes=num_classes,
                                   banks=cached_loader(self.cfg.decode.sample_rate, storage_of(self.cfg)),
                                   domain=FeatureDomain.from_mel(self.cfg.features))
        for op in self.policy.bank_ops():  # onto the device now, not inside the first batch
            op.loaded(self.device)
        self.policy.prepare(self.device)
        # with sequence targets, mixup's partner and lambda travel with each row (delivery re-batches):
        # the loss mixes the row's own and its partner's transcripts (specstream.losses)
        self.mixup_slot = next((i for i, op in enumerate(self.policy.ops) if op.name == "mixup"), None)

    def _tokens(self, tokens, params) -> Batch:
        """``tokens`` per row; with mixup, ``mix_lambda`` (1 for a row not mixed) and the partner's
        ``mix_tokens``."""
        out: Batch = {C.TOKENS: tokens}
        if self.mixup_slot is None:
            return out
        p = params[self.mixup_slot]
        j = p["partner"].cpu()
        B = len(tokens)
        has = torch.tensor([len(t) > 0 for t in tokens], dtype=torch.bool)
        mixed = p["active"].cpu() & (j != torch.arange(B)) & has & has[j]
        out[C.MIX_LAMBDA] = torch.where(mixed, p["lam"].cpu().float(), torch.ones(B)).numpy()
        partner = np.empty(B, dtype=object)
        partner[:] = [tokens[int(k)] for k in j]
        out[C.MIX_TOKENS] = partner
        return out

    def _frame_targets(self, segments, T: int) -> np.ndarray:
        """[B, T, C] multi-hot on the clean log-mel frames (frame i at i * hop, or at
        i * hop + n_fft / 2 without centring) from the decode stage's segments."""
        f = self.cfg.features
        hop_s = f.hop_length / f.sample_rate
        offset = 0.0 if f.center else f.n_fft / 2 / f.sample_rate
        C = len(vocab_from_config(self.cfg))  # frame_field is refused with a tokenizer: a vocabulary exists
        return np.stack([frame_matrix(json.loads(s), T, C, hop_s, offset) for s in segments]) if len(segments) \
            else np.zeros((0, T, C), np.float32)

    def __call__(self, batch: Batch) -> Batch:
        t0 = time.perf_counter()
        out = self._featurize(batch)  # its outputs are host arrays: the device work is done
        audio_s = float(np.sum(batch[C.NUM_SAMPLES])) / self.cfg.decode.sample_rate
        _stats(self.sink, "featurize", len(out[C.KEY]), audio_s, time.perf_counter() - t0)
        return out

    @torch.no_grad()
    def _featurize(self, batch: Batch) -> Batch:
        wave = _tensor(pad_stack(batch[C.AUDIO]), self.device)
        nsamp = _tensor(batch[C.NUM_SAMPLES], self.device, np.int64)
        ids = _tensor(batch[C.KEY_ID], self.device, np.int64)
        if C.TOKENS in batch:
            # sequence targets: a [B, 1] stand-in tells the mixing ops which rows have a transcript
            # (-1: none, with labels.required false): those are neither mixed nor chosen as partners
            has = np.array([len(t) > 0 for t in batch[C.TOKENS]], dtype=bool)
            targets = _tensor(np.where(has, 1.0, -1.0).astype(np.float32)[:, None], self.device)
        else:
            targets = _tensor(batch[C.TARGET], self.device)
        T = int(self.cfg.features.num_frames(torch.tensor(wave.shape[-1])))
        epoch = _tensor(batch[C.EPOCH], self.device, np.int64) if C.EPOCH in batch else self.cfg.epoch
        frame_targets = None
        if self.cfg.labels.frame_field is not None:
            frame_targets = _tensor(self._frame_targets(batch[C.SEGMENTS], T), self.device)
        out = self.policy.featurize(wave, nsamp, self.logmel, self.cfg.decode.sample_rate, key_ids=ids,
                                    targets=targets, seed=self.cfg.seed, epoch=epoch, frame_targets=frame_targets)
        feats, lengths = finalize(out.features, out.lengths, self.cfg.features), out.lengths
        feats, lengths, ft = self.layout.fit(feats, lengths, out.frame_targets)
        feats = feats.float().cpu().numpy()
        lengths = lengths.cpu().numpy().astype(np.int64)
        result: Batch = {C.KEY: batch[C.KEY], C.SHARD: batch[C.SHARD], C.LENGTH: lengths,
                         **({C.INDEX: np.asarray(batch[C.INDEX])} if C.INDEX in batch else {}),
                         C.EPOCH: np.asarray(batch[C.EPOCH]) if C.EPOCH in batch
                         else np.full(len(lengths), self.cfg.epoch, dtype=np.int64),
                         }
        if C.TOKENS in batch:
            result.update(self._tokens(batch[C.TOKENS], out.params))
        else:
            result[C.TARGET] = out.targets.cpu().numpy()
        if ft is not None:
            ft = ft.float().cpu().numpy()
        result[C.FEATURES] = self.layout.rows(feats, lengths, time_axis=2)
        if ft is not None:
            result[C.FRAME_TARGET] = self.layout.rows(ft, lengths, time_axis=1)
        if self.cfg.log_params:
            # every parameter (fields are regenerated from recorded stream keys, so rows stay small):
            # Policy.params_from_rows(...) turns logged rows back into replayable parameters
            result[C.AUG_PARAMS] = np.array([json.dumps(r) for r in out.params_rows()], dtype=object)
        return result
