"""Decode and featurize stages as plain callables (no Ray)."""
import io
import json
import os

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch
import torchaudio

from conftest import flac_bytes, tone
from specstream.io.samples import SCHEMA
from specstream.pipeline.stages import DecodeStage, FeaturizeStage

BASE = {"source": {"shards": "unused"}, "labels": {"vocab": ["dog", "cat", "bird"]}}


def cfg(**over):
    c = json.loads(json.dumps(BASE))
    for k, v in over.items():
        c.setdefault(k, {}).update(v) if isinstance(v, dict) else c.__setitem__(k, v)
    return c


def table(rows):
    full = [{"key": r["key"], "shard": r.get("shard", "s.tar"), "audio": r["audio"],
             "audio_format": r.get("audio_format", "flac"), "cls": r.get("cls"),
             "txt": r.get("txt"), "json": r.get("json")} for r in rows]
    return pa.Table.from_pylist(full, schema=SCHEMA)


class Sink(list):
    def __call__(self, entries):
        self.extend(entries)


def test_decode_fixed_crop_pad_resample_and_mono():
    rows = [
        {"key": "a", "audio": flac_bytes(tone(1.5, 16000)), "cls": "dog"},
        {"key": "b", "audio": flac_bytes(tone(0.5, 16000)), "cls": "cat"},
        {"key": "c", "audio": flac_bytes(tone(1.0, 8000), 8000), "cls": "bird"},
        {"key": "d", "audio": flac_bytes(tone(1.0, 44100, channels=2), 44100, "WAV"),
         "audio_format": "wav", "json": json.dumps({"label": "dog"}), "cls": "dog"},
    ]
    sink = Sink()
    out = DecodeStage(cfg(), sink)(table(rows))
    assert sink == []
    assert list(out["key"]) == ["a", "b", "c", "d"]
    assert out["audio"].shape == (4, 16000) and out["audio"].dtype == np.float32
    assert out["num_samples"].tolist() == [16000, 8000, 16000, 16000]
    assert np.all(out["audio"][1, 8000:] == 0)  # padded with zeros past its length
    assert out["target"].tolist() == [0, 1, 2, 0]
    # resampled 8 kHz clip equals torchaudio's resample of the decoded clip
    x8, _ = sf.read(io.BytesIO(rows[2]["audio"]), dtype="float32")
    ref = torchaudio.functional.resample(torch.from_numpy(x8), 8000, 16000).numpy()
    np.testing.assert_allclose(out["audio"][2], ref[:16000], atol=1e-5)
    assert out["key_id"].dtype == np.int64


def test_decode_quarantines_bad_audio_unknown_label_and_long_clips():
    rows = [
        {"key": "ok", "audio": flac_bytes(tone(1.0)), "cls": "dog"},
        {"key": "garbage", "audio": b"RIFF....not audio at all", "cls": "dog"},
        {"key": "unknown", "audio": flac_bytes(tone(1.0)), "cls": "horse"},
        {"key": "nolabel", "audio": flac_bytes(tone(1.0))},
        {"key": "long", "audio": flac_bytes(tone(3.0)), "cls": "cat"},
    ]
    sink = Sink()
    out = DecodeStage(cfg(decode={"max_seconds": 2.0}), sink)(table(rows))
    assert list(out["key"]) == ["ok"]
    reasons = {e["key"]: e["reason"] for e in sink}
    assert set(reasons) == {"garbage", "unknown", "nolabel", "long"}
    assert "undecodable audio" in reasons["garbage"]
    assert "not in the vocabulary" in reasons["unknown"]
    assert "no label" in reasons["nolabel"]
    assert "over the limit" in reasons["long"]
    assert all(e["stage"] == "decode" and e["shard"] == "s.tar" for e in sink)


def test_labels_not_required_keep_samples_as_no_label():
    """labels.required: false keeps a sample without a usable label (none, or not in the
    vocabulary) as "no label": class -1, or in multi-label mode a row of -1 (not zeros, which
    is the label "no class present": an empty list). The ops and the trainer's loss skip them."""
    rows = [
        {"key": "ok", "audio": flac_bytes(tone(1.0)), "cls": "dog cat"},
        {"key": "unknown", "audio": flac_bytes(tone(1.0)), "cls": "horse"},
        {"key": "nolabel", "audio": flac_bytes(tone(1.0))},
        {"key": "none", "audio": flac_bytes(tone(1.0)), "json": json.dumps({"tags": []})},
    ]
    sink = Sink()
    single = DecodeStage(cfg(labels={"required": False}), sink)(table(rows[1:3]))
    assert sink == [] and single["target"].tolist() == [-1, -1]
    multi = DecodeStage(cfg(labels={"required": False, "multi_label": True}), sink)(table(rows[:3]))
    assert sink == [] and list(multi["key"]) == ["ok", "unknown", "nolabel"]
    assert multi["target"].tolist() == [[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]]
    empty = DecodeStage(cfg(labels={"required": False, "multi_label": True, "field": "json:tags"}), sink)(
        table(rows[3:]))
    assert empty["target"].tolist() == [[0.0, 0.0, 0.0]]  # a label: no class present


def test_all_bad_batch_returns_empty_typed_columns():
    out = DecodeStage(cfg(), Sink())(table([{"key": "x", "audio": b"junk", "cls": "dog"}]))
    assert out["audio"].shape == (0, 16000) and out["target"].shape == (0,)


def test_random_crop_is_a_function_of_key_not_batch():
    rng = np.random.default_rng(0)
    clips = {f"k{i}": flac_bytes((rng.standard_normal(48000) * 0.1).astype(np.float32)) for i in range(6)}
    stage = DecodeStage(cfg(decode={"crop": "random"}))
    a = stage(table([{"key": k, "audio": v, "cls": "dog"} for k, v in clips.items()]))
    order = ["k5", "k2", "k0"]
    b = stage(table([{"key": k, "audio": clips[k], "cls": "dog"} for k in order]))
    for j, k in enumerate(order):
        np.testing.assert_array_equal(b["audio"][j], a["audio"][int(k[1])])
    # different keys get different offsets; another seed moves them
    firsts = {tuple(a["audio"][i, :4]) for i in range(6)}
    assert len(firsts) == 6
    c = DecodeStage(cfg(decode={"crop": "random"}, seed=1))(table([{"key": "k0", "audio": clips["k0"], "cls": "dog"}]))
    assert not np.array_equal(c["audio"][0], a["audio"][0])


def test_center_crop_and_full_mode():
    x = np.linspace(-0.5, 0.5, 32000, dtype=np.float32)
    row = {"key": "a", "audio": flac_bytes(x), "cls": "dog"}
    out = DecodeStage(cfg(decode={"crop": "center"}))(table([row]))
    dec, _ = sf.read(io.BytesIO(row["audio"]), dtype="float32")
    np.testing.assert_array_equal(out["audio"][0], dec[8000:24000])
    full = DecodeStage(cfg(decode={"mode": "full"}))(table([row, {"key": "b", "audio": flac_bytes(tone(0.3)), "cls": "cat"}]))
    assert full["audio"].dtype == object and [len(a) for a in full["audio"]] == [32000, 4800]
    assert full["num_samples"].tolist() == [32000, 4800]


def test_multi_label_targets_are_multi_hot():
    rows = [{"key": "a", "audio": flac_bytes(tone(1.0)), "json": json.dumps({"tags": ["dog", "bird"]})},
            {"key": "b", "audio": flac_bytes(tone(1.0)), "json": json.dumps({"tags": "cat"})}]
    out = DecodeStage(cfg(labels={"field": "json:tags", "multi_label": True}))(table(rows))
    assert out["target"].tolist() == [[1, 0, 1], [0, 1, 0]]


def test_featurize_matches_torchaudio_per_sample_whatever_the_batch():
    c = cfg(decode={"mode": "full"})
    stage = FeaturizeStage(c, device="cpu")
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000, 4321)]
    audio = np.empty(3, dtype=object)
    audio[:] = waves
    batch = {"key": np.array(["a", "b", "c"], dtype=object), "shard": np.array(["s"] * 3, dtype=object),
             "key_id": np.arange(3, dtype=np.int64), "num_samples": np.array([16000, 9000, 4321]),
             "target": np.array([0, 1, 2]), "audio": audio}
    out = stage(batch)
    ref = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80)
    assert out["length"].tolist() == [101, 57, 28]
    for i, w in enumerate(waves):
        expect = torch.log(ref(torch.from_numpy(w)) + 1e-6).numpy()
        assert out["features"][i].shape == expect.shape
        np.testing.assert_allclose(out["features"][i], expect, rtol=1e-4, atol=1e-4)
    assert out["target"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("path", ["numba", "torch"])
@pytest.mark.parametrize("short", [False, True])
def test_logmel_reflect_pads_each_sample_at_its_own_end(short, path):
    """LogMel's per-sample centre padding, every way it is built: the CPU kernel (one pass),
    and on the torch path every sample longer than the pad (one copy, each row's reflected
    tail written at its own end) and a batch with a sample shorter than the pad (the gather
    path). Each long sample's features equal torchaudio's on the sample alone, whatever
    garbage the batch holds past its length."""
    import contextlib

    from specstream.features import LogMel, MelConfig
    from specstream.functional import cpu_kernels

    with (cpu_kernels.torch_path() if path == "torch" else contextlib.nullcontext()):
        _check_reflect_padding(short)


def test_centre_padding_kernel_equals_the_torch_paths_bit_for_bit():
    """The centre-padding kernel writes what the torch paths write, in both pad modes, for
    lengths 0, 1, below and above the pad, full rows and rows shorter than the pad, with
    garbage past every length."""
    from specstream.features import LogMel, MelConfig
    from specstream.functional import cpu_kernels

    assert cpu_kernels.available(), "numba is a dependency: the CPU kernel must be in use"
    g = torch.Generator().manual_seed(5)
    for mode in ("reflect", "constant"):
        lm = LogMel(MelConfig(pad_mode=mode))
        for N, lengths in ((3000, [3000] * 3), (3000, [3000, 2999, 1000, 201]), (3000, [3000, 150, 1, 0, 200, 201]),
                           (150, [150, 10, 0, 1]), (1, [1, 0])):
            L = torch.tensor(lengths)
            w = torch.randn(len(lengths), N, generator=g)
            got = lm._center_pad(w, L)
            with cpu_kernels.torch_path():
                want = lm._center_pad(w, L)
            assert torch.equal(got, want), (mode, N, lengths)


def _check_reflect_padding(short):
    from specstream.features import LogMel, MelConfig

    rng = np.random.default_rng(3)
    lengths = [16000, 9000, 4321, 201] + ([150] if short else [])
    wave = torch.from_numpy(rng.standard_normal((len(lengths), 16500)).astype(np.float32) * 0.1)
    L = torch.tensor(lengths)
    clean = wave * (torch.arange(16500)[None, :] < L[:, None])
    feats, frames = LogMel(MelConfig())(wave, L)
    ref = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80)
    assert frames.tolist() == [n // 160 + 1 for n in lengths]
    for i, n in enumerate(lengths[:4]):
        expect = torch.log(ref(clean[i, :n]) + 1e-6)
        torch.testing.assert_close(feats[i, :, : int(frames[i])], expect, rtol=1e-4, atol=1e-4)
        assert (feats[i, :, int(frames[i]):] == 0).all()


@pytest.mark.filterwarnings("ignore:At least one mel filterbank has all zero values")
@pytest.mark.parametrize("path", ["numba", "torch"])
@pytest.mark.parametrize("scale,norm", [("htk", None), ("slaney", "slaney"), ("htk", "slaney")])
def test_mel_filterbanks_match_torchaudio_and_a_dense_vtlp_grid(scale, norm, path):
    """The filterbanks (two triangles per frequency: the CPU kernel, or scattered by torch):
    unwarped = torchaudio's melscale_fbanks; VTLP-warped per sample = every filter's
    triangle evaluated at every warped frequency in numpy (float64), for narrow filters
    (n_fft 64) too."""
    import contextlib

    from specstream.functional import cpu_kernels

    assert cpu_kernels.available(), "numba is a dependency: the CPU kernel must be in use"
    with (cpu_kernels.torch_path() if path == "torch" else contextlib.nullcontext()):
        _check_filterbanks(scale, norm)


def _check_filterbanks(scale, norm):
    from specstream.functional.mel import mel_fbanks, mel_to_hz, hz_to_mel, vtlp_warp

    for sr, n_fft, n_mels, f_min, f_max in ((16000, 400, 80, 0.0, None), (8000, 64, 40, 20.0, 3800.0)):
        fb = mel_fbanks(sr, n_fft, n_mels, f_min, f_max, scale, norm)[0]
        ta = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, f_min, f_max or sr / 2, n_mels, sr, norm, scale)
        torch.testing.assert_close(fb, ta.T, rtol=1e-4, atol=1e-5 * float(ta.max()))  # torchaudio: float32
        alpha = torch.tensor([0.82, 0.9, 1.0, 1.07, 1.18], dtype=torch.float64)
        got = mel_fbanks(sr, n_fft, n_mels, f_min, f_max, scale, norm, alpha=alpha, boundary_hz=0.6 * sr / 2)
        freqs = torch.linspace(0, sr // 2, n_fft // 2 + 1, dtype=torch.float64)
        warped = vtlp_warp(freqs, alpha, sr, 0.6 * sr / 2).numpy()
        lo, hi = (float(hz_to_mel(torch.tensor(float(f), dtype=torch.float64), scale)) for f in (f_min, f_max or sr / 2))
        pts = mel_to_hz(torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64), scale).numpy()
        for b in range(len(alpha)):
            for m in range(n_mels):
                left, mid, right = pts[m], pts[m + 1], pts[m + 2]
                w = warped[b]
                tri = np.clip(np.minimum((w - left) / (mid - left), (right - w) / (right - mid)), 0, None)
                if norm == "slaney":
                    tri = tri * 2.0 / (right - left)
                np.testing.assert_allclose(got[b, m].numpy(), tri, rtol=1e-6, atol=1e-9 * max(1.0, tri.max()))


@pytest.mark.filterwarnings("ignore:At least one mel filterbank has all zero values")
@pytest.mark.parametrize("opts", [
    dict(), dict(power=1.0), dict(log_floor="clamp", log_offset=1e-10),
    dict(n_fft=512, hop_length=128, n_mels=64, window="hamming", mel_scale="slaney", norm="slaney",
         f_min=50.0, f_max=7000.0),
    dict(n_fft=256, n_mels=128),  # filters narrower than a bin: some rows all zero
])
def test_logmel_kernel_equals_the_torch_path(opts):
    """The CPU kernel (power, each mel filter summed over its own span of frequencies, the
    padding) against the torch path (a dense filterbank product, which CUDA runs), on rows of
    unequal lengths with garbage past them (one shorter than the centre pad, one of a single
    sample), with the fixed filterbank and with per-sample VTLP banks: the same frames, the
    same log-mel to float roundoff, 0 past each sample's frames."""
    from specstream.features import LogMel, MelConfig
    from specstream.functional import cpu_kernels
    from specstream.functional.mel import mel_fbanks

    assert cpu_kernels.available(), "numba is a dependency: the CPU kernel must be in use"
    rng = np.random.default_rng(4)
    lengths = [16000, 9000, 4321, 150, 1, 15999]
    wave = torch.from_numpy(rng.standard_normal((len(lengths), 16000)).astype(np.float32) * 0.1)
    L = torch.tensor(lengths)
    mc = MelConfig(**opts)
    lm = LogMel(mc)
    alpha = torch.tensor([0.85, 0.9, 1.0, 1.05, 1.1, 1.15], dtype=torch.float64)
    vtlp = mel_fbanks(mc.sample_rate, mc.n_fft, mc.n_mels, mc.f_min, mc.f_max, mc.mel_scale, mc.norm, alpha=alpha)
    pairs = mel_fbanks(mc.sample_rate, mc.n_fft, mc.n_mels, mc.f_min, mc.f_max, mc.mel_scale, mc.norm, alpha=alpha,
                       pairs=True)
    assert torch.equal(pairs.dense(), vtlp)
    for fb in (None, vtlp, pairs):
        got, frames = lm(wave, L, fbanks=fb)
        with cpu_kernels.torch_path():
            want, want_frames = lm(wave, L, fbanks=fb)
        assert torch.equal(frames, want_frames) and got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
        for i in range(len(lengths)):
            assert (got[i, :, int(frames[i]):] == 0).all()
    # the pair kernel lays out each sample's bank and spans itself: the dense kernel's sums, bit for bit
    assert torch.equal(lm(wave, L, fbanks=pairs)[0], lm(wave, L, fbanks=vtlp)[0])


def test_logmel_edge_inputs_on_both_paths():
    """Filterbanks that do not fit the transform raise on the kernel path as on the dense one
    (the kernel reads without bounds checks: it must never see them); an empty batch gives
    an empty result; constant centre padding ignores garbage past each sample's length (a
    sample alone = the same sample in a batch); invalid power and floors are refused."""
    import contextlib

    from specstream.features import LogMel, MelConfig
    from specstream.functional import cpu_kernels
    from specstream.functional.mel import mel_fbanks

    rng = np.random.default_rng(7)
    wave = torch.from_numpy(rng.standard_normal((4, 4000)).astype(np.float32))
    L = torch.tensor([4000, 3000, 2000, 1000])
    for path in ("kernel", "torch"):
        with (cpu_kernels.torch_path() if path == "torch" else contextlib.nullcontext()):
            lm = LogMel(MelConfig())
            wrong_rows = mel_fbanks(16000, 400, 80, alpha=torch.ones(2, dtype=torch.float64), pairs=True)
            wrong_freqs = mel_fbanks(16000, 512, 80, alpha=torch.ones(4, dtype=torch.float64), pairs=True)
            for bad in (torch.rand(2, 80, 201), torch.rand(6, 80, 201), torch.rand(1, 80, 257), torch.rand(80, 129),
                        wrong_rows, wrong_freqs):
                with pytest.raises(RuntimeError):
                    lm(wave, L, fbanks=bad)
            feats, frames = lm(wave[:0], L[:0])
            assert feats.shape == (0, 80, 26) and frames.shape == (0,)
            const = LogMel(MelConfig(pad_mode="constant"))
            garbage = wave.clone()
            garbage[1:, 3000:] = 7.0
            together, fr = const(garbage, L)
            for i in range(4):
                n = int(L[i])
                alone, _ = const(wave[i:i + 1, :n], L[i:i + 1])
                torch.testing.assert_close(together[i, :, : int(fr[i])], alone[0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="mel_log: filterbanks"):
        spec = torch.stft(wave, 400, 160, window=torch.hann_window(400), center=False, return_complex=True)
        cpu_kernels.mel_log(spec, torch.rand(2, 80, 201), torch.tensor([20, 20, 10, 4]), 2.0, 1e-6, False)
    with pytest.raises(ValueError, match="mel_log: filter pairs"):
        cpu_kernels.mel_log(spec, None, torch.tensor([20, 20, 10, 4]), 2.0, 1e-6, False,
                            pairs=(wrong_rows.first, wrong_rows.weights, 80))
    with pytest.raises(ValueError, match="mel_log: frames"):  # the kernel reads one count per row
        cpu_kernels.mel_log(spec, torch.rand(1, 80, 201), torch.tensor([20, 20]), 2.0, 1e-6, False)
    # hand-built pairs naming filters outside the bank: dropped by the dense bank as by the kernel
    from specstream.functional.mel import FilterPairs

    odd = FilterPairs(torch.tensor([[2, -1, 0]]), torch.tensor([[[0.5, 0.7], [0.3, 0.4], [0.2, 0.1]]]), 3)
    assert torch.equal(odd.dense(), torch.tensor([[[0.0, 0.4, 0.2], [0.0, 0.0, 0.1], [0.5, 0.0, 0.0]]]))
    for bad in (dict(power=0.0), dict(power=-1.0), dict(log_offset=1e-50), dict(log_offset=0.0)):
        with pytest.raises(ValueError):
            MelConfig(**bad).validate()


def test_featurize_fixed_mode_zeroes_frames_past_length():
    stage = FeaturizeStage(cfg(), device="cpu")
    audio = np.zeros((2, 16000), np.float32)
    audio[0] = tone(1.0)
    audio[1, :8000] = tone(0.5)
    batch = {"key": np.array(["a", "b"], dtype=object), "shard": np.array(["s", "s"], dtype=object),
             "key_id": np.arange(2, dtype=np.int64), "num_samples": np.array([16000, 8000]),
             "target": np.array([0, 1]), "audio": audio}
    out = stage(batch)
    assert out["features"].shape == (2, 80, 101)
    assert out["length"].tolist() == [101, 51]
    assert np.all(out["features"][1, :, 51:] == 0) and np.any(out["features"][1, :, :51] != 0)


def test_mel_matches_librosa():
    librosa = pytest.importorskip("librosa")
    from specstream.features import LogMel, MelConfig

    x = (np.random.default_rng(2).standard_normal(16000) * 0.1).astype(np.float32)
    for scale, norm in (("htk", None), ("slaney", "slaney")):
        m = LogMel(MelConfig(mel_scale=scale, norm=norm, f_max=8000.0))
        ours, _ = m(torch.from_numpy(x)[None], torch.tensor([16000]))
        ref = librosa.feature.melspectrogram(y=x, sr=16000, n_fft=400, hop_length=160, n_mels=80,
                                             htk=scale == "htk", norm=norm, center=True,
                                             pad_mode="reflect", power=2.0, fmax=8000.0)
        mel = np.exp(ours[0].numpy()) - 1e-6
        big = ref > 1e-6 * ref.max()
        np.testing.assert_allclose(mel[big], ref[big], rtol=1e-4)


def test_featurize_normalisation_utterance_and_global():
    audio = np.zeros((2, 16000), np.float32)
    audio[0] = tone(1.0)
    audio[1, :8000] = tone(0.5, freq=880)
    batch = {"key": np.array(["a", "b"], dtype=object), "shard": np.array(["s", "s"], dtype=object),
             "key_id": np.arange(2, dtype=np.int64), "num_samples": np.array([16000, 8000]),
             "target": np.array([0, 1]), "audio": audio}
    raw = FeaturizeStage(cfg(), device="cpu")(batch)
    utt = FeaturizeStage(cfg(features={"normalize": "utterance"}), device="cpu")(batch)
    for i, n in enumerate(raw["length"]):
        f = utt["features"][i, :, :n]
        np.testing.assert_allclose(f.mean(1), 0, atol=1e-4)
        r = raw["features"][i, :, :n]
        np.testing.assert_allclose(f, (r - r.mean(1, keepdims=True)) / np.sqrt(r.var(1, keepdims=True) + 1e-5),
                                   rtol=1e-4, atol=1e-4)
        assert np.all(utt["features"][i, :, n:] == 0)
    mean, std = list(np.linspace(-5, 5, 80)), list(np.linspace(1, 2, 80))
    glob = FeaturizeStage(cfg(features={"normalize": "global", "global_mean": mean, "global_std": std}),
                          device="cpu")(batch)
    n = raw["length"][1]
    np.testing.assert_allclose(glob["features"][1, :, :n],
                               (raw["features"][1, :, :n] - np.array(mean)[:, None]) / np.array(std)[:, None],
                               rtol=1e-5, atol=1e-5)
    from specstream.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="global_mean"):
        load_config(cfg(features={"normalize": "global"}))


@pytest.mark.parametrize("opts", [
    dict(n_fft=512, hop_length=128, n_mels=64, window="hamming", pad_mode="constant", mel_scale="slaney",
         norm="slaney", f_min=50.0, f_max=7000.0),
    dict(n_fft=1024, win_length=800, hop_length=256, n_mels=128, window="blackman", pad_mode="reflect",
         mel_scale="htk", norm=None, f_min=0.0, f_max=None),
])
def test_featurizer_options_match_librosa_power_and_db(opts):
    """Matched settings: mel power within 1e-4 relative of librosa.feature.melspectrogram,
    and log: db (librosa.power_to_db, amin 1e-10, top_db 80) within 1e-3 dB on those bins."""
    librosa = pytest.importorskip("librosa")
    from specstream.features import LogMel, MelConfig, finalize

    from conftest import ASTERISK, load_wav, need_recordings

    need_recordings(ASTERISK)
    x = load_wav(os.path.join(ASTERISK, "conf-getpin.wav"))  # real speech
    mc = MelConfig(log_floor="clamp", log_offset=1e-10, **opts)
    ours, frames = LogMel(mc)(torch.from_numpy(x)[None], torch.tensor([len(x)]))
    win = {"hamming": "hamming", "blackman": "blackman"}[opts["window"]]
    ref = librosa.feature.melspectrogram(
        y=x, sr=16000, n_fft=opts["n_fft"], hop_length=opts["hop_length"], win_length=opts.get("win_length"),
        window=win, center=True, pad_mode=opts["pad_mode"], power=2.0, n_mels=opts["n_mels"],
        fmin=opts["f_min"], fmax=opts["f_max"], htk=opts["mel_scale"] == "htk", norm=opts["norm"])
    assert ours.shape[1:] == ref.shape and int(frames[0]) == ref.shape[1]
    mel = np.exp(ours[0].numpy())
    big = ref > 1e-6 * ref.max()
    np.testing.assert_allclose(mel[big], ref[big], rtol=1e-4)
    mc_db = MelConfig(log="db", top_db=80.0, log_floor="clamp", log_offset=1e-10, **opts)
    db = finalize(LogMel(mc_db)(torch.from_numpy(x)[None], torch.tensor([len(x)]))[0], frames, mc_db)
    ref_db = librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=80.0)
    np.testing.assert_allclose(db[0].numpy()[big], ref_db[big], atol=1e-3)
    np.testing.assert_allclose(db[0].numpy(), ref_db, atol=5e-3)  # float32 STFT on the faintest bins


def test_featurize_stage_runs_waveform_chain_from_config(tmp_path):
    from conftest import ALSA, need_recordings

    need_recordings(ALSA)
    from specstream.rirs import make_rir_bank

    make_rir_bank(str(tmp_path / "rirs"), count=3, seed=0)
    ops = [{"op": "speed", "factors": [0.9, 1.1]},
           {"op": "reverb", "bank": str(tmp_path / "rirs")},
           {"op": "background_noise", "bank": os.path.join(ALSA, "Noise.wav"), "snr_db": [10, 10]},
           {"op": "vtlp"}, {"op": "freq_mask", "max_width": 10, "count": 1}]
    audio = np.zeros((2, 16000), np.float32)
    audio[0] = tone(1.0)
    audio[1, :8000] = tone(0.5, freq=880)
    batch = {"key": np.array(["a", "b"], dtype=object), "shard": np.array(["s", "s"], dtype=object),
             "key_id": np.array([11, 22], dtype=np.int64), "num_samples": np.array([16000, 8000]),
             "target": np.array([0, 1]), "audio": audio}
    stage = FeaturizeStage(cfg(augment={"ops": ops}, log_params=True), device="cpu")
    out = stage(batch)
    assert out["features"].shape == (2, 80, 101)  # fixed mode keeps its shape
    params = [json.loads(p) for p in out["aug_params"]]
    assert list(params[0]) == ["0:speed", "1:reverb", "2:background_noise", "3:vtlp", "4:freq_mask"]
    for i, p in enumerate(params):
        f = p["0:speed"]["factor"]
        expect = int(np.ceil(batch["num_samples"][i] / f - 1e-6))
        assert out["length"][i] == min(101, expect // 160 + 1)
        assert 0.9 <= p["3:vtlp"]["alpha"] <= 1.1 and p["2:background_noise"]["snr_db"] == 10.0
    again = stage(batch)  # same keys, seed and epoch: same features
    np.testing.assert_array_equal(again["features"], out["features"])


def burst(seconds, on, off, sr=16000, freq=700.0):
    t = np.arange(int(seconds * sr)) / sr
    return np.where((t >= on) & (t < off), 0.3 * np.sin(2 * np.pi * freq * t), 0.0).astype(np.float32)


def onsets(features, frame_target, n, c):
    energy = np.exp(features[:, :n]).sum(0)
    e_on = int(np.nonzero(energy > 0.1 * energy.max())[0][0])
    lab = np.nonzero(frame_target[:n, c] > 0.5)[0]
    return e_on, (int(lab[0]) if len(lab) else None)


def test_frame_labels_from_segments_follow_crop_speed_and_warp():
    """json segments -> frame multi-hot on the feature frames; random crops shift them,
    speed and time warp move them with the content; malformed segments are quarantined."""
    rows = []
    for i in range(8):
        on = 0.4 + 0.05 * i
        rows.append({"key": f"b{i}", "audio": flac_bytes(burst(1.6, on, on + 0.5)), "cls": "dog",
                     "json": json.dumps({"events": [[on, on + 0.5, "bird"]]})})
    rows.append({"key": "bad", "audio": flac_bytes(burst(1.6, 0.5, 1.0)), "cls": "dog",
                 "json": json.dumps({"events": [[1.0, 0.5, "bird"]]})})
    rows.append({"key": "unknown", "audio": flac_bytes(burst(1.6, 0.5, 1.0)), "cls": "dog",
                 "json": json.dumps({"events": [[0.1, 0.5, "horse"]]})})
    c = cfg(labels={"frame_field": "json:events"}, decode={"crop": "random"},
            augment={"ops": [{"op": "speed", "factors": [0.9, 1.1]}, {"op": "time_warp", "W": 8}]})
    sink = Sink()
    dec = DecodeStage(c, sink)(table(rows))
    assert sorted(e["key"] for e in sink) == ["bad", "unknown"]
    assert "start <= end" in [e for e in sink if e["key"] == "bad"][0]["reason"]
    out = FeaturizeStage(c, device="cpu")(dec)
    ft = out["frame_target"]
    assert ft.shape == (8, 101, 3) and ft.dtype == np.float32
    assert np.all(ft[:, :, :2] == 0)  # only "bird" (class 2) is ever on
    for i in range(8):
        e_on, l_on = onsets(out["features"][i], ft[i], int(out["length"][i]), 2)
        assert l_on is not None and abs(e_on - l_on) <= 2, (i, e_on, l_on)
        assert np.all(ft[i, out["length"][i]:] == 0)
    # the crop moved the events: onsets differ from the uncropped times
    starts = {int(np.nonzero(ft[i, :, 2])[0][0]) for i in range(8)}
    assert len(starts) > 3


def test_mixup_mixes_frame_labels_where_features_mixed():
    rows = [{"key": f"m{i}", "audio": flac_bytes(burst(1.0, 0.1 * i, 0.1 * i + 0.3)), "cls": "dog",
             "json": json.dumps({"ev": [[0.1 * i, 0.1 * i + 0.3, ["dog", "cat", "bird"][i % 3]]]})}
            for i in range(6)]
    c = cfg(labels={"frame_field": "json:ev"}, augment={"ops": [{"op": "mixup", "alpha": 1.0}]}, log_params=True)
    dec = DecodeStage(c)(table(rows))
    clean = FeaturizeStage(cfg(labels={"frame_field": "json:ev"}), device="cpu")(dec)["frame_target"]
    out = FeaturizeStage(c, device="cpu")(dec)
    for i in range(6):
        p = json.loads(out["aug_params"][i])["0:mixup"]
        lam, j = p["lam"], p["partner"]
        np.testing.assert_allclose(out["frame_target"][i], lam * clean[i] + (1 - lam) * clean[j], atol=1e-6)


@pytest.mark.parametrize("variant", ["fixed-classes", "full-tokens-mixup", "fixed-frames-log"])
def test_each_stage_emits_exactly_the_columns_of_the_contract(variant):
    """decode -> featurize -> collate on real audio: every stage's output columns are those
    specstream.pipeline.columns lists for it (plus the label columns the config asks for)."""
    from specstream.pipeline import columns as C
    from specstream.pipeline.deliver import collate

    rows = [{"key": f"k{i}", "audio": flac_bytes(tone(0.5 + 0.25 * i, freq=300 + 100 * i)), "cls": "dog",
             "txt": "a dog", "json": json.dumps({"events": [[0.1, 0.3, "bird"]]})} for i in range(4)]
    over = {"fixed-classes": {},
            "full-tokens-mixup": {"decode": {"mode": "full"}, "labels": {"tokenizer": "char", "field": "txt", "vocab": None},
                                  "augment": {"ops": [{"op": "mixup"}]}},
            "fixed-frames-log": {"labels": {"frame_field": "json:events"}, "log_params": True,
                                 "augment": {"ops": [{"op": "time_mask", "max_width": 5}]}}}[variant]
    c = cfg(**over)
    labels = {C.TOKENS} if "tokens" in variant else {C.TARGET}
    extra_dec = {C.SEGMENTS} if "frames" in variant else set()
    extra_feat = ({C.MIX_LAMBDA, C.MIX_TOKENS} if "mixup" in variant else set()) | \
        ({C.FRAME_TARGET} if "frames" in variant else set()) | ({C.AUG_PARAMS} if "log" in variant else set())
    from specstream.pipeline.readtask import OUT_SCHEMA

    assert set(C.READ) == set(OUT_SCHEMA.names)  # what the read tasks emit
    dec = DecodeStage(c, Sink())(table(rows))
    assert set(dec) == set(C.DECODED) | labels | extra_dec
    out = FeaturizeStage(c, device="cpu")(dec)
    assert set(out) == set(C.FEATURIZED) | labels | extra_feat
    got = collate(out)
    lengths = ({C.TOKEN_LENGTH} if "tokens" in variant else set()) | \
        ({C.MIX_TOKEN_LENGTH} if "mixup" in variant else set())
    assert set(got) == set(C.DELIVERED) | labels | extra_feat | lengths
    assert set(C.DEVICE) >= {k for k, v in got.items() if isinstance(v, torch.Tensor)} - {C.INDEX, C.EPOCH}


def test_featurize_workers_keep_freed_memory_for_the_next_batch():
    """With glibc's defaults the log-mel's big buffers go back to the OS when freed and are
    faulted in again by the next batch. The Ray-side featurize wrapper (what a read task or
    actor builds: actors.retain_freed_memory, on by default) keeps them; a stage built in
    the caller's own process leaves its allocator alone.

    Checked in fresh processes (the allocator's state is per process), each after three
    featurize calls of 64 one-second clips: rounds of twenty-four 8 MiB blocks allocated on
    the main thread, written, and freed; what the last round's frees hand back to the OS is
    read off the resident set. glibc's default trims the heap's free top above its dynamic
    threshold (at most 64 MiB), so the caller gives back at least 128 MiB; the worker's
    settings keep it all. (The stage's own page faults per call depend on how its
    allocations spread over threads and arenas, and vary between runs and machines:
    ``scripts/bench_augment.py --part stages`` reports them, not this test.)"""
    pytest.importorskip("ray")  # the wrapper lives in the pipeline layer
    import subprocess
    import sys

    tuned = sorted(k for k in os.environ if k.startswith("MALLOC_") or
                   (k == "GLIBC_TUNABLES" and "malloc" in os.environ[k]))
    if tuned:
        pytest.skip(f"glibc's malloc is tuned here ({', '.join(tuned)}): the caller's defaults are not glibc's")
    code = (
        "import ctypes, os, sys, numpy as np\n"
        "from specstream.config import load_config\n"
        "from specstream.pipeline import stages\n"
        "from specstream.pipeline.build import _PerProcess\n"
        "cfg = load_config({'source': {'shards': 'x.tar'}, 'labels': {'num_classes': 2}})\n"
        "st = _PerProcess(stages.FeaturizeStage, cfg, None).stage() if sys.argv[1] == 'worker' "
        "else stages.FeaturizeStage(cfg)\n"
        "rng = np.random.default_rng(0)\n"
        "batch = {'key': np.array([f'k{i}' for i in range(64)], dtype=object),\n"
        "         'shard': np.array(['s'] * 64, dtype=object), 'key_id': np.arange(64, dtype=np.int64),\n"
        "         'audio': np.stack([0.1 * rng.standard_normal(16000).astype(np.float32) for _ in range(64)]),\n"
        "         'num_samples': np.full(64, 16000), 'target': np.zeros(64, dtype=np.int64)}\n"
        "for _ in range(3): assert st(batch)['features'].shape[0] == 64\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "page = os.sysconf('SC_PAGE_SIZE')\n"
        "def resident(): return int(open('/proc/self/statm').read().split()[1]) * page\n"
        "def heap_round():\n"
        "    blocks = [libc.malloc(8 << 20) for _ in range(24)]\n"
        "    for b in blocks: ctypes.memset(b, 1, 8 << 20)\n"
        "    full = resident()\n"
        "    for b in reversed(blocks): libc.free(b)\n"
        "    return full - resident()\n"
        "for _ in range(2): heap_round()\n"
        "print(stages._retained, heap_round() >> 20)\n"
    )
    got = {}
    for mode in ("caller", "worker"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        retained, released_mib = out.stdout.split()[-2:]
        got[mode] = (retained == "True", int(released_mib))
    assert got["caller"][0] is False and got["worker"][0] is True, got
    # the caller's allocator gives back what lies above its trim threshold (<= 64 of 192 MiB)
    assert got["caller"][1] >= 96, got
    # the worker's keeps every block for the next round
    assert got["worker"][1] <= 8, got
