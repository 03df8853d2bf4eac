"""Waveform-domain augmentation and the featurizer chain, on real recordings (Debian
packages installed by .ci/run): SNR achieved, reverb keeps the direct path, speed/tempo
durations, distortion harmonics, filters, VTLP, replay and batch invariance. No Ray."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import ALSA, ASTERISK, POCKETSPHINX, load_wav, need_recordings
from specstream.augment import (Babble, BackgroundNoise, BankError, Context, Distortion, Filter,
                                Noise, Policy, Reverb, Speed, Tempo, WaveBatch, WaveGain, build_policy)
from specstream.augment.random import key_ids
from specstream.features import LogMel, MelConfig, warped_fbanks
from specstream.io.banks import bank_items, check_bank, load_bank

SR = 16000


def run(op, wave, lengths, seed=0, slot=0, epoch=0):
    """(augmented WaveBatch, params) for one op on [B, N] numpy audio."""
    w, L = torch.from_numpy(np.asarray(wave)), torch.from_numpy(np.asarray(lengths))
    ids = torch.from_numpy(key_ids([f"utt{i}" for i in range(len(L))]))
    wb = WaveBatch(w, L, SR)
    p = op.sample(Context(ids, seed, epoch, slot), wb)
    return op.apply(wb, p), p


def own_power(x, lengths):
    """Mean square of each row over its own first ``lengths[i]`` samples (float64, numpy:
    measured independently of the ops' own power())."""
    x = np.asarray(x, dtype=np.float64)
    return torch.tensor([np.mean(x[i, : int(n)] ** 2) for i, n in enumerate(np.asarray(lengths))])


def snr_db(clean, noisy, lengths):
    c = np.asarray(clean, dtype=np.float64)
    n = np.asarray(noisy, dtype=np.float64)[:, : c.shape[1]] - c
    return (10 * torch.log10(own_power(c, lengths) / own_power(n, lengths))).float()


def psd_slope_db_per_decade(x, lo=100.0, hi=4000.0):
    """Slope of the Welch power spectrum (dB/decade) between lo and hi Hz."""
    n = 1024
    frames = x[: len(x) // n * n].reshape(-1, n) * np.hanning(n)
    p = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(0)
    f = np.fft.rfftfreq(n, 1 / SR)
    band = (f >= lo) & (f <= hi)
    return np.polyfit(np.log10(f[band]), 10 * np.log10(p[band]), 1)[0]


@pytest.fixture(scope="module")
def noise_bank_dir(tmp_path_factory):
    """A bank folder of real recorded noise (alsa-utils' Noise.wav, 48 kHz) and a nested clip."""
    need_recordings(ALSA)
    d = tmp_path_factory.mktemp("noise_bank")
    shutil.copy(os.path.join(ALSA, "Noise.wav"), d / "noise.wav")
    os.makedirs(d / "more")
    shutil.copy(os.path.join(ALSA, "Front_Center.wav"), d / "more" / "front.wav")
    (d / "README.txt").write_text("not audio, ignored")
    return str(d)


@pytest.fixture(scope="module")
def babble_bank_dir(tmp_path_factory):
    """Real read speech from another corpus (pocketsphinx test data, 16 kHz)."""
    need_recordings(POCKETSPHINX)
    d = tmp_path_factory.mktemp("babble_bank")
    for p in sorted(glob.glob(os.path.join(POCKETSPHINX, "**", "*.wav"), recursive=True))[:8]:
        shutil.copy(p, d / os.path.basename(p))
    return str(d)


@pytest.fixture(scope="module")
def rir_dir(tmp_path_factory):
    from specstream.rirs import make_rir_bank

    d = str(tmp_path_factory.mktemp("rirs"))
    make_rir_bank(d, count=6, seed=3, rt60=(0.3, 0.8))
    return d


@pytest.mark.parametrize("colour,slope", [("white", 0.0), ("pink", -10.0), ("brown", -20.0)])
def test_generated_noise_hits_the_drawn_snr_with_its_colour(speech, colour, slope):
    wave, L = speech
    out, p = run(Noise(snr_db=(-5, 25), colour=colour), wave, L)
    measured = snr_db(wave, out.audio, L)
    assert torch.all((measured - p["snr_db"]).abs() < 0.5), (measured, p["snr_db"])
    assert float(p["snr_db"].min()) < float(p["snr_db"].max())  # per-sample draws
    pad = torch.arange(out.audio.shape[1])[None, :] >= torch.from_numpy(L)[:, None]
    assert torch.all(out.audio[pad] == 0)
    # the spectrum has the colour's slope (1/f**beta: -10 beta dB/decade)
    noise = (out.audio - torch.from_numpy(wave))[int(np.argmax(L))].numpy()
    assert abs(psd_slope_db_per_decade(noise) - slope) < 2.5


def test_recorded_noise_bank_at_snr(speech, noise_bank_dir):
    wave, L = speech
    items = bank_items(noise_bank_dir)
    assert [os.path.basename(i) for i in items] == ["front.wav", "noise.wav"]  # recursive, audio only
    bank = load_bank(noise_bank_dir, SR)
    assert len(bank) == 2 and bank.sample_rate == SR
    np.testing.assert_allclose(bank.seconds, 1.4079 + 1.4280, atol=2e-3)  # 48 kHz clips, resampled
    op = BackgroundNoise(bank, snr_db=(0, 15))
    out, p = run(op, wave, L)
    assert torch.all((snr_db(wave, out.audio, L) - p["snr_db"]).abs() < 0.5)
    assert set(p["clip"][:, 0].tolist()) == {0, 1}  # both clips drawn over 10 samples
    # the noise is the bank clip from the drawn offset, looped past its end
    i = int(np.argmax(L))
    added = (out.audio - torch.from_numpy(wave))[i]
    c, o = int(p["clip"][i, 0]), int(p["offset"][i, 0])
    ref = bank.segments(torch.tensor([c]), torch.tensor([o]), wave.shape[1])[0]
    n = int(L[i])
    g = float(torch.dot(added[:n], ref[:n]) / torch.dot(ref[:n], ref[:n]))
    torch.testing.assert_close(added[:n], g * ref[:n], rtol=1e-4, atol=1e-6)
    assert n > bank.lengths[c]  # this sample is longer than the clip: it looped


def test_babble_sums_several_speakers_at_snr(speech, babble_bank_dir):
    wave, L = speech
    op = Babble(load_bank(babble_bank_dir, SR), snr_db=(5, 10), count=(3, 5))
    out, p = run(op, wave, L)
    assert torch.all((snr_db(wave, out.audio, L) - p["snr_db"]).abs() < 0.5)
    assert p["count"].min() >= 3 and p["count"].max() <= 5 and p["count"].unique().numel() > 1
    assert p["clip"].shape == (len(L), 5)


def test_reverb_keeps_the_direct_path_aligned(speech, rir_dir):
    wave, L = speech
    rooms = [json.loads(line) for line in open(os.path.join(rir_dir, "manifest.jsonl"))]
    bank = load_bank(rir_dir, SR)
    assert len(bank) == 6
    # the simulated direct path sits where the room geometry puts it (+ the 40-tap sinc's half)
    for r, (s, n) in zip(rooms, zip(bank.starts.tolist(), bank.lengths.tolist())):
        dist = np.linalg.norm(np.subtract(r["source"], r["mic"]))
        assert abs(r["direct_sample"] - (dist / 343.0 * SR + 40)) <= 1.0
        assert int(torch.argmax(bank.data[s:s + n].abs())) == r["direct_sample"]
    op = Reverb(bank, keep_level=False)
    out, p = run(op, wave, L)
    assert out.audio.shape == wave.shape and torch.equal(out.lengths, torch.from_numpy(L))
    for i in range(len(L)):
        n = int(L[i])
        dry, wet = wave[i, :n], out.audio[i, :n].numpy()
        # wet is dry convolved with the drawn RIR, read from its direct-path peak on
        rir = op.rirs("cpu").rirs[int(p["rir"][i])].numpy()
        assert int(np.argmax(np.abs(rir))) == op.rirs("cpu").pre
        ref = np.convolve(dry, rir)[op.rirs("cpu").pre: op.rirs("cpu").pre + n]
        np.testing.assert_allclose(wet, ref, atol=2e-5 * np.abs(ref).max())
        # and measured from the signals alone (regularised deconvolution), the first arrival
        # of the dry-to-wet filter is at lag 0 (+-3 samples of deconvolution smear): the
        # content has not moved. Unaligned, it would sit at the propagation delay plus the
        # sinc's 40 taps: > 70 samples at >= 0.7 m source-mic distance.
        D, W = np.fft.rfft(dry, 2 * n), np.fft.rfft(wet, 2 * n)
        h = np.fft.irfft(W * np.conj(D) / (np.abs(D) ** 2 + 1e-3 * np.abs(D).max() ** 2), 2 * n)
        h = np.abs(np.roll(h, 200)[:1200])
        onset = int(np.argmax(h > 0.5 * h.max())) - 200
        assert abs(onset) <= 3, f"sample {i}: first arrival at lag {onset}"
        assert np.all(out.audio[i, n:].numpy() == 0)
    # an impulse comes out with its direct sound at the same sample, at unit gain
    imp = np.zeros((1, 8000), np.float32)
    imp[0, 1234] = 1.0
    out1, p1 = run(op, imp, [8000])
    y = out1.audio[0].numpy()
    assert int(np.argmax(np.abs(y))) == 1234 and abs(y[1234] - 1.0) < 1e-5
    # reverberation adds energy after the direct sound, none before the sinc's taps
    assert np.abs(y[:1234 - 40]).max() < 1e-6 and np.sum(y[1300:] ** 2) > 1e-3
    # keep_level restores each sample's power
    out2, _ = run(Reverb(bank), wave, L)
    torch.testing.assert_close(own_power(out2.audio, L), own_power(wave, L), rtol=1e-4, atol=0)


def dominant_hz(x):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / SR)[np.argmax(spec)]


def test_speed_changes_duration_and_pitch_by_the_drawn_factor(speech):
    wave, L = speech
    out, p = run(Speed(factors=(0.9, 1.1)), wave, L)
    f = p["factor"].double()
    assert set(np.round(f.numpy(), 3).tolist()) == {0.9, 1.1}
    expect = torch.ceil(torch.from_numpy(L).double() / f).long()
    assert torch.all((out.lengths - expect).abs() <= 1)
    pad = torch.arange(out.audio.shape[1])[None, :] >= out.lengths[:, None]
    assert torch.all(out.audio[pad] == 0)
    # the content is the speech resampled: same as torchaudio on the sample alone
    import torchaudio

    i = int(np.argmax(L))
    orig, new = Speed.rates(SR, float(f[i]))
    ref = torchaudio.functional.resample(torch.from_numpy(wave[i, : L[i]]), orig, new)
    n = int(out.lengths[i])
    torch.testing.assert_close(out.audio[i, :n], ref[:n], atol=1e-4, rtol=0)
    # a tone moves by the factor: pitch and tempo change together
    t = (0.3 * np.sin(2 * np.pi * 500 * np.arange(SR) / SR)).astype(np.float32)[None]
    o, q = run(Speed(factors=(1.1,)), t, [SR])
    assert abs(dominant_hz(o.audio[0, : int(o.lengths[0])].numpy()) - 550) < 3


def test_tempo_changes_duration_not_pitch(speech):
    wave, L = speech
    out, p = run(Tempo(factors=(0.8, 1.25)), wave, L)
    expect = torch.round(torch.from_numpy(L).double() / p["factor"].double()).long()
    assert torch.equal(out.lengths, expect)
    t = (0.3 * np.sin(2 * np.pi * 500 * np.arange(SR) / SR)).astype(np.float32)[None]
    o, q = run(Tempo(factors=(1.25,)), t, [SR])
    n = int(o.lengths[0])
    assert n == round(SR / 1.25)
    assert abs(dominant_hz(o.audio[0, :n].numpy()) - 500) < 3


def harmonic_db(x, f0, k):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    at = lambda f: spec[np.argmin(np.abs(freqs - f))]  # noqa: E731
    return 20 * np.log10(at(k * f0) / at(f0) + 1e-12)


def test_distortion_adds_harmonics_and_keeps_the_peak():
    t = (0.5 * np.sin(2 * np.pi * 500 * np.arange(SR) / SR)).astype(np.float32)[None]
    third = []
    for drive in (3.0, 12.0, 24.0):
        o, _ = run(Distortion(drive_db=(drive, drive), kind="tanh"), t, [SR])
        y = o.audio[0].numpy()
        assert abs(np.abs(y).max() - 0.5) < 1e-4
        third.append(harmonic_db(y, 500, 3))
        assert harmonic_db(y, 500, 2) < -80  # symmetric: odd harmonics only
    assert third[0] < third[1] < third[2] and third[2] > -15
    o, _ = run(Distortion(drive_db=(12, 12), kind="asymmetric"), t, [SR])
    assert harmonic_db(o.audio[0].numpy(), 500, 2) > -30  # even harmonics appear
    assert abs(np.abs(o.audio[0].numpy()).max() - 0.5) < 1e-4
    o, _ = run(Distortion(drive_db=(12, 12), kind="clip"), t, [SR])
    assert harmonic_db(o.audio[0].numpy(), 500, 3) > -20


def test_filters_band_limit_without_delay(speech):
    rng = np.random.default_rng(0)
    white = (0.1 * rng.standard_normal((1, 4 * SR))).astype(np.float32)

    def band_db(x, lo, hi):
        f = np.fft.rfftfreq(len(x), 1 / SR)
        s = np.abs(np.fft.rfft(x)) ** 2
        return 10 * np.log10(s[(f >= lo) & (f < hi)].mean())

    lp, p = run(Filter(kind="lowpass", lowpass_hz=(2000, 2000)), white, [4 * SR])
    y = lp.audio[0].numpy()
    assert band_db(y, 200, 1000) - band_db(y, 4000, 8000) > 30
    assert abs(band_db(y, 200, 1000) - band_db(white[0], 200, 1000)) < 0.5  # passband untouched
    hp, _ = run(Filter(kind="highpass", highpass_hz=(1000, 1000)), white, [4 * SR])
    y = hp.audio[0].numpy()
    assert band_db(y, 3000, 7000) - band_db(y, 20, 250) > 30
    bp, _ = run(Filter(kind="bandpass", bandpass_hz=((300, 300), (3400, 3400))), white, [4 * SR])
    y = bp.audio[0].numpy()
    assert band_db(y, 800, 2500) - band_db(y, 20, 100) > 25 and band_db(y, 800, 2500) - band_db(y, 6000, 8000) > 25
    # zero phase: an impulse's peak stays where it was
    imp = np.zeros((1, 4000), np.float32)
    imp[0, 2000] = 1.0
    o, _ = run(Filter(kind="lowpass", lowpass_hz=(3000, 3000)), imp, [4000])
    assert int(np.argmax(o.audio[0].numpy())) == 2000
    # per-sample kinds on real speech; padding stays 0
    wave, L = speech
    out, p = run(Filter(), wave, L)
    assert p["kind"].unique().numel() > 1
    pad = torch.arange(wave.shape[1])[None, :] >= torch.from_numpy(L)[:, None]
    assert torch.all(out.audio[pad] == 0)


def test_vtlp_moves_a_tone_by_alpha():
    cfg = MelConfig(n_mels=80)
    m = LogMel(cfg)
    t = torch.from_numpy((0.3 * np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)).astype(np.float32))[None]
    base, _ = m(t, torch.tensor([SR]))
    for alpha in (0.9, 1.1):
        fb = warped_fbanks(cfg, torch.tensor([alpha]), boundary_hz=4800.0)
        warped, _ = m(t, torch.tensor([SR]), fbanks=fb)
        ref = LogMel(cfg)(torch.from_numpy((0.3 * np.sin(2 * np.pi * 1000 * alpha * np.arange(SR) / SR))
                                           .astype(np.float32))[None], torch.tensor([SR]))[0]
        peak = lambda f: int(f[0, :, 10:-10].mean(-1).argmax())  # noqa: E731
        assert peak(warped) == peak(ref) != peak(base)
    # alpha = 1 is the plain filterbank; the warp keeps 0 and Nyquist fixed
    fb1 = warped_fbanks(cfg, torch.ones(2), 4800.0)
    torch.testing.assert_close(fb1[0], m.fbanks, atol=2e-5, rtol=0)
    from specstream.features import vtlp_warp

    w = vtlp_warp(torch.tensor([0.0, 8000.0]), torch.tensor([0.9, 1.1]), SR, 4800.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 8000.0], [0.0, 8000.0]]))


FULL_CHAIN = [
    {"op": "wave_gain", "min_db": -6, "max_db": 6},
    {"op": "speed", "factors": [0.9, 1.0, 1.1]},
    {"op": "reverb", "bank": "RIRS", "p": 0.7},
    {"op": "background_noise", "bank": "NOISE", "snr_db": [5, 20], "p": 0.8},
    {"op": "noise", "colour": ["white", "pink", "brown"], "snr_db": [10, 30], "p": 0.5},
    {"op": "filter", "p": 0.5},
    {"op": "distortion", "drive_db": [0, 12], "p": 0.3},
    {"op": "vtlp", "alpha": [0.9, 1.1]},
    {"op": "freq_mask", "max_width": 15, "count": 2},
    {"op": "time_mask", "max_width": 20, "count": 2},
]


def chain(rir_dir, noise_dir):
    ops = json.loads(json.dumps(FULL_CHAIN).replace('"RIRS"', json.dumps(rir_dir))
                     .replace('"NOISE"', json.dumps(noise_dir)))
    return build_policy({"ops": ops}, banks=lambda src: load_bank(src, SR))


def test_featurize_chain_is_per_key_whatever_the_batch_and_replays(speech, rir_dir, noise_bank_dir):
    wave, L = speech
    policy = chain(rir_dir, noise_bank_dir)
    assert policy.has_wave_ops and len(policy) == len(FULL_CHAIN)
    m = LogMel(MelConfig())
    keys = [f"k{i}" for i in range(len(L))]
    w, Lt = torch.from_numpy(wave), torch.from_numpy(L)
    out = policy.featurize(w, Lt, m, SR, keys=keys, seed=5, epoch=2)
    assert [p["__name__"] for p in out.params] == [o["op"] for o in FULL_CHAIN]
    # a sample alone (no padding, no neighbours) gets the same features as in the batch
    for i in (0, int(np.argmin(L))):
        alone = policy.featurize(w[i:i + 1, : L[i]], Lt[i:i + 1], m, SR, keys=[keys[i]], seed=5, epoch=2)
        n = int(alone.lengths[0])
        assert n == int(out.lengths[i])
        torch.testing.assert_close(alone.features[0, :, :n], out.features[i, :, :n], atol=2e-3, rtol=1e-3)
    # recorded parameters replay exactly
    again = policy.featurize(w, Lt, m, SR, params=out.params)
    torch.testing.assert_close(again.features, out.features, atol=0, rtol=0)
    # the next epoch draws anew
    other = policy.featurize(w, Lt, m, SR, keys=keys, seed=5, epoch=3)
    assert not torch.equal(other.params[0]["db"], out.params[0]["db"])
    # spectrogram-only entry points refuse a chain with waveform ops
    with pytest.raises(ValueError, match="featurize"):
        policy(out.features, out.lengths, keys=keys)


def test_chain_order_and_bank_errors(tmp_path):
    with pytest.raises(ValueError, match="must come before"):
        Policy.from_dict({"ops": [{"op": "freq_mask"}, {"op": "speed"}]})
    with pytest.raises(ValueError, match="at most one filterbank"):
        Policy.from_dict({"ops": [{"op": "vtlp"}, {"op": "vtlp"}]})
    with pytest.raises(BankError, match="missing does not exist"):
        bank_items(str(tmp_path / "missing"))
    with pytest.raises(BankError, match="no audio files"):  # a pattern that matches nothing
        bank_items(str(tmp_path / "missing*.wav"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BankError, match="no audio files"):
        load_bank(str(tmp_path / "empty"), SR)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.wav").write_bytes(b"RIFF junk that is not a wav")
    with pytest.raises(BankError, match="none of its first clips decodes"):
        check_bank(str(tmp_path / "broken"))
    with pytest.raises(BankError, match="no usable audio"):
        load_bank(str(tmp_path / "broken"), SR)
    op = BackgroundNoise(str(tmp_path / "empty"))
    with pytest.raises(BankError, match="not loaded"):
        run(op, np.zeros((1, 100), np.float32), [100])


def test_bank_from_tar_shards(tmp_path):
    need_recordings(ASTERISK)
    from conftest import flac_bytes, write_shard

    clips = [load_wav(os.path.join(ASTERISK, f"digits/{d}.wav")) for d in range(5)]
    write_shard(str(tmp_path / "noise-000000.tar"),
                [{"__key__": f"d{d}", "flac": flac_bytes(c)} for d, c in enumerate(clips)] +
                [{"__key__": "bad", "flac": b"not flac"}])
    bank = load_bank(str(tmp_path), SR)
    assert len(bank) == 5 and [n.split("#")[1] for n in bank.names] == [f"d{d}" for d in range(5)]
    assert [p[0].split("#")[1] for p in bank.problems] == ["bad"]
    np.testing.assert_allclose(bank.data[: len(clips[0])].numpy(), clips[0], atol=1e-4)  # 16-bit FLAC


def test_wave_gain_is_exact():
    x = np.full((2, 10), 0.1, np.float32)
    x[1, 5:] = 0  # the batch contract: 0 past each length
    out, p = run(WaveGain(-6, 6), x, [10, 5])
    torch.testing.assert_close(out.audio, torch.from_numpy(x) * (10 ** (p["db"] / 20))[:, None])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU box)")
def test_featurize_chain_cpu_cuda_parity(speech, rir_dir, noise_bank_dir):
    """The whole featurize chain draws the same parameters on CUDA and gives the same
    features (banks moved to the device once)."""
    wave, L = speech
    policy = chain(rir_dir, noise_bank_dir)
    keys = [f"k{i}" for i in range(len(L))]
    m = LogMel(MelConfig())
    cpu = policy.featurize(torch.from_numpy(wave), torch.from_numpy(L), m, SR, keys=keys, seed=1)
    gpu = policy.featurize(torch.from_numpy(wave).cuda(), torch.from_numpy(L).cuda(), m.cuda(), SR, keys=keys,
                           seed=1)
    for a, b in zip(cpu.params, gpu.params):
        for k, v in a.items():
            if isinstance(v, torch.Tensor) and not v.dtype.is_floating_point:
                assert torch.equal(v, b[k].cpu()), (a["__name__"], k)
    assert torch.equal(gpu.lengths.cpu(), cpu.lengths)
    valid = cpu.features != 0
    torch.testing.assert_close(gpu.features.cpu()[valid], cpu.features[valid], rtol=1e-3, atol=2e-2)


def test_make_rir_bank_cli_is_seeded(tmp_path, capsys):
    from specstream.cli import main

    assert main(["make-rir-bank", str(tmp_path / "a"), "--count", "3", "--seed", "7"]) == 0
    assert "wrote 3 RIRs" in capsys.readouterr().out
    main(["make-rir-bank", str(tmp_path / "b"), "--count", "2", "--seed", "7", "--max-seconds", "0.5"])
    import soundfile as sf

    a0, sr = sf.read(tmp_path / "a" / "rir-000000.wav", dtype="float32")
    b0, _ = sf.read(tmp_path / "b" / "rir-000000.wav", dtype="float32")
    assert sr == SR and np.array_equal(a0[: len(b0)], b0)  # RIR i depends only on (seed, i)
    rooms = [json.loads(x) for x in open(tmp_path / "b" / "manifest.jsonl")]
    assert len(b0) == rooms[0]["direct_sample"] + SR // 2
    assert all(0.2 <= r["rt60"] <= 0.9 for r in rooms)


def test_every_waveform_op_on_tiny_and_silent_samples(rir_dir, noise_bank_dir):
    """1-, 5- and 100-sample clips and a silent one through every op at p = 1: finite
    features, zero padding, silence stays without noise (its SNR is undefined)."""
    ops = json.loads(json.dumps(FULL_CHAIN).replace('"RIRS"', json.dumps(rir_dir))
                     .replace('"NOISE"', json.dumps(noise_bank_dir)))
    for o in ops:
        o["p"] = 1.0
    ops[2:2] = [{"op": "tempo"}, {"op": "babble", "bank": noise_bank_dir}]
    policy = build_policy({"ops": ops}, banks=lambda s: load_bank(s, SR))
    L = torch.tensor([1, 5, 100, 399, 16000])
    w = torch.zeros(5, 16000)
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate(L.tolist()):
        w[i, :n] = 0.1 * torch.randn(n, generator=g)
    w[3] = 0.0
    m = LogMel(MelConfig())
    silent_floor = float(torch.log(torch.tensor(1e-6)))
    for seed in range(5):
        out = policy.featurize(w, L, m, SR, keys=[f"k{i}" for i in range(5)], seed=seed)
        assert torch.isfinite(out.features).all()
        pad = torch.arange(out.features.shape[-1])[None, :] >= out.lengths[:, None]
        assert (out.features.permute(0, 2, 1)[pad] == 0).all()
        valid3 = out.features[3, :, : out.lengths[3]]
        # the log floor (a mask's mean fill of a silent sample is that floor, to float rounding)
        assert ((valid3 - silent_floor).abs() < 1e-5).all()


@pytest.mark.parametrize("op", [{"op": "speed", "factors": [0.9, 1.1]}, {"op": "tempo", "factors": [0.8, 1.25]}])
def test_frame_targets_follow_speed_and_tempo(op):
    """A tone burst from 0.5 s to 1.0 s labelled on its frames: after speed or tempo (and a
    spectrogram time warp), the label boundary sits where the energy boundary is."""
    t = np.arange(SR) / SR
    x = np.where(t >= 0.5, 0.3 * np.sin(2 * np.pi * 700 * t), 0.0).astype(np.float32)
    B = 6
    wave = torch.from_numpy(np.tile(x, (B, 1)))
    L = torch.full((B,), SR)
    m = LogMel(MelConfig())
    frames = int(m.cfg.num_frames(torch.tensor(SR)))
    labels = (torch.arange(frames) >= 50).long().repeat(B, 1)  # frame 50 = 0.5 s
    policy = build_policy({"ops": [op, {"op": "time_warp", "W": 10}]})
    out = policy.featurize(wave, L, m, SR, keys=[f"u{i}" for i in range(B)], seed=2, frame_targets=labels)
    factors = out.params[0]["factor"]
    plain = build_policy({"ops": [op]}).featurize(wave, L, m, SR, keys=[f"u{i}" for i in range(B)], seed=2,
                                                   frame_targets=labels)
    for b in range(B):  # without the warp: exactly the factor's rescaling of frame 50
        onset = int(torch.nonzero(plain.frame_targets[b])[0])
        assert abs(onset - 50 / float(factors[b])) < 1
    assert factors.unique().numel() == 2
    for b in range(B):
        n = int(out.lengths[b])
        energy = out.features[b, :, :n].exp().sum(0)
        onset_energy = int(torch.nonzero(energy > 0.1 * energy.max())[0])
        onset_label = int(torch.nonzero(out.frame_targets[b, :n])[0])
        assert abs(onset_energy - onset_label) <= 2, (float(factors[b]), onset_energy, onset_label)
        assert abs(onset_label - 50 / float(factors[b])) <= 11  # moved by the factor (+- W of the warp)
        assert (out.frame_targets[b, n:] == 0).all()


def _scipy_lfilter_rows(x, b, a):
    from scipy.signal import lfilter as sp_lfilter

    return np.stack([sp_lfilter(b[i], a[i], x[i]) for i in range(x.shape[0])])


@pytest.mark.parametrize("path", ["numba", "torch", "gpu"])
def test_lfilter_and_filtfilt_kernels_match_scipy_per_sample(path):
    """The three paths against scipy in float64 on each sample alone (lengths vary, the
    padding holds garbage that must not be read), cutoffs down to 1 Hz (poles a hair from
    1): the CPU kernel (float64 state, four rows at a time: row counts off its blocks of 4),
    the CPU's torch path (torchaudio's recursion in float64, whole-row backward pass of
    filtfilt), and CUDA's (FFT products with the impulse response), run on the CPU."""
    import contextlib

    from specstream.functional import cpu_kernels, dsp
    from specstream.functional.dsp import BROWN, PINK, biquad, filtfilt, lfilter

    assert cpu_kernels.available(), "numba is a dependency: the CPU kernel must be in use"
    tol = 2e-6  # float64 on both paths, float32 out
    g = torch.Generator().manual_seed(0)
    L = torch.tensor([4000, 3100, 1500, 40, 1, 3999, 0])
    R = len(L)
    clean = torch.randn(R, 4000, generator=g) * 0.3 * (torch.arange(4000)[None, :] < L[:, None])
    x = clean + (torch.arange(4000)[None, :] >= L[:, None]) * 5.0
    with contextlib.ExitStack() as paths:
        if path != "numba":
            paths.enter_context(cpu_kernels.torch_path())
        if path == "gpu":
            paths.enter_context(dsp.gpu_path_on_cpu())
        for kind, f0 in (("highpass", torch.linspace(50, 500, R)), ("lowpass", torch.linspace(2000, 7000, R)),
                         ("lowpass", torch.linspace(1, 40, R)), ("highpass", torch.linspace(1, 3, R))):
            b, a = biquad(kind, f0.double(), SR, 0.7071)
            bn, an = b.numpy(), a.numpy()
            ref = _scipy_lfilter_rows(clean.double().numpy(), bn, an)
            scale = max(1.0, float(np.abs(ref).max()))
            np.testing.assert_allclose(lfilter(clean, b, a).numpy(), ref, atol=tol / 2 * scale)
            got = filtfilt(x, L, b, a).numpy()
            for i in range(R):
                n = int(L[i])
                fwd = _scipy_lfilter_rows(clean[i:i + 1, :n].double().numpy(), bn[i:i + 1], an[i:i + 1])[0]
                back = _scipy_lfilter_rows(fwd[None, ::-1].copy(), bn[i:i + 1], an[i:i + 1])[0][::-1]
                np.testing.assert_allclose(got[i, :n], back, atol=tol * max(1.0, float(np.abs(back).max(initial=0))))
                assert (got[i, n:] == 0).all()
        # one shared set of coefficients (the noise colours: pink is order 3, brown order 1)
        for coefs in (PINK, BROWN):
            bp, ap = (torch.tensor(c) for c in coefs)
            ref = _scipy_lfilter_rows(clean.double().numpy(), np.tile(bp.numpy(), (R, 1)),
                                      np.tile(ap.numpy(), (R, 1)))
            got = lfilter(clean, bp, ap).numpy()
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_impulse_response_matches_scipy_down_to_1_hz_on_long_rows():
    """CUDA's filters convolve with impulse_response(): against scipy's recursion fed an
    impulse, for both biquad kinds over the Q range the filter op accepts, cutoffs from 1 Hz
    at 16 and 48 kHz (poles a hair from 1 and from each other, where matrix-power shortcuts
    lose digits), the noise colours' shared filters, unequal b and a lengths, and lengths
    from 1 sample to 200,000."""
    from scipy.signal import lfilter as sp_lfilter

    from specstream.functional import cpu_kernels
    from specstream.functional.dsp import BROWN, PINK, biquad, impulse_response

    sets = [(torch.tensor(b, dtype=torch.float64)[None], torch.tensor(a, dtype=torch.float64)[None])
            for b, a in (PINK, BROWN)]
    sets.append((torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.03125]], dtype=torch.float64),
                 torch.tensor([[2.0, -1.0]], dtype=torch.float64)))  # order 4 over order 1, a0 = 2
    for sr in (16000, 48000):
        f0 = torch.tensor([1.0, 3.0, 40.0, 500.0, 0.49 * sr], dtype=torch.float64)
        for kind in ("lowpass", "highpass"):
            for q in (0.1, 0.5, 0.7071, 10.0):
                sets.append(biquad(kind, f0, sr, q))
    for b, a in sets:
        for n in (1, 2, 3, 5, 4000, 200000):
            got = impulse_response(b, a, n).numpy()
            assert got.shape == (b.shape[0], n) and got.dtype == np.float64
            imp = np.zeros(n)
            imp[0] = 1.0
            for i in range(b.shape[0]):
                ref = sp_lfilter(b[i].numpy(), a[i].numpy(), imp)
                # what a unit-amplitude input's output can be off by, relative to the filter's gain
                assert np.abs(got[i] - ref).sum() <= 1e-9 * max(1.0, np.abs(ref).sum()), (b[i], a[i], n)
            if max(b.shape[-1], a.shape[-1]) <= cpu_kernels.IIR_MAX_TAPS:
                # the kernel flushes a decaying state to 0 before it turns subnormal (slow arithmetic)
                assert not ((got != 0) & (np.abs(got) < np.finfo(np.float64).tiny)).any(), (b, a, n)
    # one shared set gives one row; per-row sets one row each
    assert impulse_response(torch.tensor(PINK[0]), torch.tensor(PINK[1]), 10).shape == (1, 10)


@pytest.mark.parametrize("path", ["numba", "torch", "gpu"])
def test_filters_on_every_path_long_rows_empty_batches_and_1d_input(path):
    """Each path (see the scipy test above) on what the op's own calls do not exercise:
    200,000-sample rows through a 1 Hz, Q = 10 low- and high-pass at 48 kHz in float64
    (within 1e-8 of the peak against scipy, forward and backward from each row's own end),
    a batch of no rows, and a 1-D signal with one set of coefficients (its shape kept)."""
    import contextlib

    from scipy.signal import lfilter as sp_lfilter

    from specstream.functional import cpu_kernels, dsp
    from specstream.functional.dsp import biquad, filtfilt, lfilter

    with contextlib.ExitStack() as paths:
        if path != "numba":
            paths.enter_context(cpu_kernels.torch_path())
        if path == "gpu":
            paths.enter_context(dsp.gpu_path_on_cpu())
        g = torch.Generator().manual_seed(5)
        N = 200000
        L = torch.tensor([N, 150000])
        x = torch.randn(2, N, generator=g, dtype=torch.float64) * (torch.arange(N)[None, :] < L[:, None])
        for kind in ("lowpass", "highpass"):
            b, a = biquad(kind, torch.tensor([1.0, 1.0], dtype=torch.float64), 48000, 10.0)
            got = filtfilt(x, L, b, a).numpy()
            for i in range(2):
                n = int(L[i])
                fwd = sp_lfilter(b[i].numpy(), a[i].numpy(), x[i, :n].numpy())
                back = sp_lfilter(b[i].numpy(), a[i].numpy(), fwd[::-1])[::-1]
                assert np.abs(got[i, :n] - back).max() <= 1e-8 * np.abs(back).max(), (path, kind, i)
                assert (got[i, n:] == 0).all()
        b, a = biquad("lowpass", torch.tensor([1000.0], dtype=torch.float64), SR, 0.7071)
        empty = torch.zeros(0, 500)
        assert lfilter(empty, b[:0], a[:0]).shape == (0, 500)
        assert filtfilt(empty, torch.zeros(0, dtype=torch.int64), b[:0], a[:0]).shape == (0, 500)
        one = torch.randn(100, generator=g)
        got = lfilter(one, b[0], a[0])
        assert got.shape == (100,)
        np.testing.assert_allclose(got.numpy(), sp_lfilter(b[0].numpy(), a[0].numpy(), one.double().numpy()),
                                   rtol=1e-5, atol=1e-6)


def _df2t_reference(x, c, flush=False):
    """The IIR kernel's recursion for one row in Python floats (IEEE doubles, no fused
    multiply-add): transposed direct form II with coefficients c = (b0..b3, a1..a3), from
    rest; ``flush``: states below 1e-290 set to 0 after every 64th step, as the kernel does."""
    p = q = s = 0.0
    out = []
    for i, v in enumerate(x):
        y = c[0] * v + p
        p = c[1] * v - c[4] * y + q
        q = c[2] * v - c[5] * y + s
        s = c[3] * v - c[6] * y
        out.append(y)
        if flush and (i & 63) == 63:
            p, q, s = (0.0 if abs(z) < 1e-290 else z for z in (p, q, s))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("in_place", [False, True])
def test_iir_kernel_is_the_scalar_recursion_bit_for_bit(dtype, in_place):
    """The kernel runs four rows per unit as vector lanes: each lane must do the scalar
    recursion's arithmetic, operation for operation (no fused multiply-add, no reassociation),
    so every row equals a plain Python recursion exactly. Seven listed rows (a unit filled by
    repeating the last row), ragged lengths including 0 and 1, the biquads, the order-3 pink
    and order-1 brown filters, causal and zero-phase, in place, float32 and float64 rows, and a
    decay below 1e-290 where the kernel's flush to zero must match the reference's."""
    from specstream.functional import cpu_kernels
    from specstream.functional.dsp import BROWN, PINK, biquad

    g = torch.Generator().manual_seed(11)
    B, N = 9, 600
    x = (torch.randn(B, N, generator=g) * 0.3).to(dtype)
    x[8, 1:] = 0  # an impulse through a fast decay: states fall below 1e-290 around step 290
    rows = torch.tensor([2, 8, 0, 5, 7, 3, 1])
    b, a = biquad("lowpass", torch.tensor([300.0, 1000, 2000, 3000, 5000, 7000, 50]).double(), SR, 0.7071)
    b, a = torch.nn.functional.pad(b, (0, 1)), torch.nn.functional.pad(a, (0, 1))
    b[3], a[3] = torch.tensor(PINK[0]), torch.tensor(PINK[1])
    b[4], a[4] = torch.tensor(BROWN[0] + (0.0, 0.0)), torch.tensor(BROWN[1] + (0.0, 0.0))
    b[1], a[1] = torch.tensor([1.0, 0, 0, 0]).double(), torch.tensor([1.0, -0.1, 0, 0]).double()
    n = torch.tensor([600, 600, 0, 1, 333, 599, 64])
    coef = [tuple(float(v) for v in b[r]) + tuple(float(v) for v in a[r, 1:]) for r in range(len(rows))]
    for zero_phase in (False, True):
        out = x.clone() if in_place else torch.full_like(x, 7.0)
        cpu_kernels.iir_rows(out if in_place else x, b, a, n if zero_phase else None, rows=rows, out=out)
        for r, row in enumerate(rows.tolist()):
            src = x[row].double().tolist()
            if zero_phase:
                # backward, the kernel steps from the longest row of the row's unit of four
                # (fed zeros past the row's own end, where the state stays exactly 0), and
                # flushes every 64 of those steps
                k, m = int(n[r]), int(n[r // 4 * 4:r // 4 * 4 + 4].max())
                fwd = _df2t_reference(src[:k], coef[r], flush=True)
                want = _df2t_reference((fwd + [0.0] * (m - k))[::-1], coef[r], flush=True)[::-1][:k] + [0.0] * (N - k)
            else:
                want = _df2t_reference(src, coef[r], flush=True)
            want = torch.tensor(want, dtype=torch.float64).to(dtype)
            assert torch.equal(out[row], want), (zero_phase, r, row, (out[row] - want).abs().max())
        untouched = [i for i in range(B) if i not in rows.tolist()]
        assert torch.equal(out[untouched], x[untouched] if in_place else torch.full_like(x[untouched], 7.0))
    # the decay really went below the flush threshold (else the flush is not exercised)
    assert min(abs(v) for v in _df2t_reference([1.0] + [0.0] * 400, coef[1]) if v != 0) < 1e-290


def test_iir_kernel_keeps_nan_and_inf_like_the_torch_path():
    """The kernel's flush of tiny states (every 64 steps) leaves NaN and inf alone: a NaN in a
    row poisons what follows it there as on the torch path, not just up to the next flush."""
    from specstream.functional import cpu_kernels
    from specstream.functional.dsp import biquad, filtfilt, lfilter

    b, a = biquad("lowpass", torch.tensor([1000.0], dtype=torch.float64), SR, 0.7071)
    for bad in (float("nan"), float("inf")):
        x = torch.randn(1, 2000, generator=torch.Generator().manual_seed(8))
        x[0, 100] = bad
        L = torch.tensor([2000])
        got = (lfilter(x, b, a), filtfilt(x, L, b, a))
        with cpu_kernels.torch_path():
            want = (lfilter(x, b, a), filtfilt(x, L, b, a))
        for g, w in zip(got, want):
            assert torch.equal(torch.isfinite(g), torch.isfinite(w)), bad
        assert not bool(torch.isfinite(got[0][0, 100:]).any())


def test_filtfilt_and_lfilter_keep_gradients():
    """With a gradient wanted (the torch path, through torchaudio's lfilter): the same values
    as without, and a gradient flows back to the input (an in-place write on torchaudio's
    output view used to fail)."""
    from specstream.functional.dsp import biquad, filtfilt, lfilter

    b, a = biquad("lowpass", torch.tensor([1000.0, 3000.0], dtype=torch.float64), SR, 0.7071)
    L = torch.tensor([800, 500])
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 800, dtype=dtype) * (torch.arange(800)[None, :] < L[:, None])
        want = filtfilt(x, L, b, a)
        xg = x.clone().requires_grad_(True)
        got = filtfilt(xg, L, b, a)
        assert got.dtype == dtype and got.requires_grad
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
        (got.square().sum() + lfilter(xg, b, a).sum()).backward()
        assert xg.grad is not None and bool(torch.isfinite(xg.grad).all()) and bool(xg.grad.abs().sum() > 0)
    # and to the coefficients
    bg, ag = b.clone().requires_grad_(True), a.clone().requires_grad_(True)
    x = torch.randn(2, 800, dtype=torch.float64) * (torch.arange(800)[None, :] < L[:, None])
    (filtfilt(x, L, bg, ag).square().sum() + lfilter(x, bg, ag).sum()).backward()
    for c in (bg, ag):
        assert c.grad is not None and bool(torch.isfinite(c.grad).all()) and bool(c.grad.abs().sum() > 0)


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_resample_kernel_equals_torchaudio(path):
    """resample() against torchaudio's on the speed factors' and the decoder's rate pairs,
    to float roundoff: the CPU kernel sums the same taps in the same order, the matrix
    product (the torch path, which CUDA runs) in another. Not bit for bit: torchaudio's own
    convolution changes its last bit with the thread count and the batch's shape (a row
    alone vs inside a batch, 2 threads, an AMD EPYC)."""
    import contextlib

    import torchaudio.functional as AF

    from specstream.functional import cpu_kernels
    from specstream.functional.timescale import resample

    x = torch.randn(3, 5001, generator=torch.Generator().manual_seed(1))
    with (cpu_kernels.torch_path() if path == "torch" else contextlib.nullcontext()):
        for orig, new in ((14400, 16000), (17600, 16000), (3, 2), (16000, 16000), (8000, 16000), (44100, 16000),
                          (22050, 16000), (1, 7)):
            want = AF.resample(x, orig, new)
            got = resample(x, orig, new)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_resample_into_rows_equals_torchaudio_on_each_row_alone(path):
    """resample_into (speed's write of its groups straight into the output batch): each
    listed row, over its own length only (garbage past it is ignored), is torchaudio's
    resample of that row alone, cut at the output width, zeros after its new length; rows
    not listed keep whatever out held; out-of-range or repeated rows are refused."""
    import contextlib

    import torchaudio.functional as AF

    from specstream.functional import cpu_kernels
    from specstream.functional.timescale import resample_into

    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4000, generator=g)
    rows = torch.tensor([4, 0, 2, 5])
    lengths = torch.tensor([4000, 1, 0, 2777])
    with (cpu_kernels.torch_path() if path == "torch" else contextlib.nullcontext()):
        # the speed factors' pairs and 3 -> 4 (whole frames as vector lanes, then the last
        # ones one by one), widths cutting the rows and narrower than a vector, and copies
        for orig, new, W in ((11, 10, 3637), (9, 10, 4445), (9, 10, 3000), (3, 4, 5334), (3, 4, 5300),
                             (11, 10, 12), (1, 1, 4000), (5, 5, 3000)):
            out = torch.full((6, W), 7.0)
            resample_into(x, lengths, rows, orig, new, out)
            for r, L in zip(rows.tolist(), lengths.tolist()):
                want = AF.resample(x[r, :L], orig, new)[:W] if L else torch.zeros(0)
                n = -(-L * new // orig)
                assert want.shape[0] == min(n, W)
                torch.testing.assert_close(out[r, : want.shape[0]], want, rtol=0, atol=1e-6)
                assert bool((out[r, want.shape[0]:] == 0).all())
            assert bool((out[[1, 3]] == 7.0).all())  # rows not listed: left as they were
    if path == "kernel":
        for bad in (torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2, 6])):
            with pytest.raises(ValueError, match="rows"):
                resample_into(x, lengths, bad, 11, 10, torch.empty(6, 4000))


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_resample_groups_into_equals_one_call_per_rate_pair(path):
    """Speed resamples all its rows in one call (one kernel launch for every rate pair and
    the kept rows' copies): equal to one resample_into per pair, rows interleaved across
    pairs, unequal lengths (0 and 1 included), a pair outside the lane path (3 -> 1) and a
    width that cuts rows; rows in no group keep what out held."""
    import contextlib

    from specstream.functional import cpu_kernels
    from specstream.functional.timescale import resample_groups_into, resample_into

    g = torch.Generator().manual_seed(9)
    x = torch.randn(12, 3000, generator=g)
    lengths = torch.tensor([3000, 2500, 1, 0, 2999, 1800, 3000, 700, 2000, 3000, 5, 2222])
    groups = [(torch.tensor([0, 4, 8]), 11, 10), (torch.tensor([1, 5, 9, 11]), 9, 10),
              (torch.tensor([2, 6]), 1, 1), (torch.tensor([3, 7]), 3, 1)]
    with (cpu_kernels.torch_path() if path == "torch" else contextlib.nullcontext()):
        for W in (3334, 3000):
            got = torch.full((12, W), 7.0)
            resample_groups_into(x, lengths, groups, got)
            want = torch.full((12, W), 7.0)
            for rows, o, n in groups:
                resample_into(x, lengths[rows], rows, o, n, want)
            assert torch.equal(got, want), W
            assert bool((got[10] == 7.0).all())  # row 10 is in no group


def test_looped_bank_segments_equal_the_indexed_reads():
    from specstream.augment.wave.base import bank_segments, looped_bank
    from specstream.io.banks import AudioBank

    g = torch.Generator().manual_seed(2)
    clips = [torch.randn(n, generator=g) for n in (50, 7, 300, 1)]
    bank = AudioBank.from_clips(clips, SR)
    clip = torch.tensor([0, 1, 2, 3, 2, 1])
    offset = (torch.rand(6, generator=g) * bank.lengths[clip]).long()
    for n in (1, 6, 64, 700):
        looped = looped_bank(bank, n)
        assert looped is not None and looped[0] >= n
        got = bank_segments(bank, clip, offset, n, looped)
        assert torch.equal(got, bank.segments(clip, offset, n))
        assert torch.equal(got, bank_segments(bank, clip, offset, n))


def test_reverb_with_cached_rir_spectra_equals_direct_convolution(rir_dir):
    from specstream.functional.dsp import fft_convolve

    bank = load_bank(rir_dir, SR)
    op = Reverb(bank, keep_level=False)
    x = torch.randn(4, 3000, generator=torch.Generator().manual_seed(3))
    L = torch.tensor([3000, 2000, 999, 10])
    x = x * (torch.arange(3000)[None, :] < L[:, None])
    wb = WaveBatch(x, L, SR)
    p = op.sample(Context(torch.arange(4), 0, 0, 0), wb)
    for _ in range(2):  # the second call reads the kept spectra
        out = op.apply(wb, p).audio
    rirs = op.rirs(x.device)
    ref = fft_convolve(x, rirs.rirs[p["rir"]])[:, rirs.pre:rirs.pre + 3000] * (torch.arange(3000)[None, :] < L[:, None])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("path", ["numba", "torch"])
def test_mixing_kernels_match_a_numpy_reference_per_sample(path):
    """mix_at_snr, mix_segments_at_snr and match_power (the CPU kernels: powers in float64,
    one pass per row; or the torch path) against float64 numpy on each sample alone:
    lengths 0, 1 and full, garbage past each length in the noise and in strided views,
    silent noise (no noise added) and silent samples. The drawn SNR is what comes out."""
    import contextlib

    from specstream.functional import cpu_kernels, dsp

    assert cpu_kernels.available(), "numba is a dependency: the CPU kernels must be in use"
    g = torch.Generator().manual_seed(1)
    L = torch.tensor([3000, 1, 0, 2999, 1700, 3000, 640])
    B, N = len(L), 3000
    inside = torch.arange(N)[None, :] < L[:, None]
    x = torch.randn(B, N, generator=g) * 0.2 * inside
    x[5] = 0  # a silent sample: g = 0
    noise = torch.randn(B, N, generator=g) + 9.0 * ~inside  # garbage past each length
    noise[6, :640] = 0  # silent noise: nothing added
    snr = torch.tensor([0.0, 10.0, 5.0, -5.0, 30.0, 3.0, 12.0])
    data = torch.randn(20000, generator=g)
    starts = torch.randint(0, 20000 - N, (B, 3), generator=g)
    count = torch.tensor([1, 3, 2, 0, 2, 3, 1])
    wide = torch.randn(B, N + 700, generator=g)
    with (cpu_kernels.torch_path() if path == "torch" else contextlib.nullcontext()):
        mixed = dsp.mix_at_snr(x, noise.clone(), L, snr)
        seg_mixed = dsp.mix_segments_at_snr(x, L, data, starts, count, snr)
        wider = torch.zeros(B, N + 77)  # the reference as reverb hands it: a column slice of its FFT input
        wider[:, :N] = x + 0.5 * inside
        matched = dsp.match_power(wide[:, 300:300 + N], wider[:, :N], L, True)
        cut = dsp.match_power(wide[:, 300:300 + N].clone(), x, L, False, inplace=True)
    X, Nz, D, W = (t.double().numpy() for t in (x, noise, data, wide))

    def mix_ref(xr, nr, db):
        ps, pn = (xr ** 2).mean() if len(xr) else 0.0, (nr ** 2).mean() if len(nr) else 0.0
        return xr + (np.sqrt(ps / (pn * 10 ** (db / 10))) if pn > 0 else 0.0) * nr

    for b in range(B):
        n = int(L[b])
        np.testing.assert_allclose(mixed[b, :n].numpy(), mix_ref(X[b, :n], Nz[b, :n], float(snr[b])),
                                   rtol=1e-5, atol=1e-6)
        segs = [D[s:s + n] / max(np.sqrt((D[s:s + n] ** 2).mean()) if n else 0.0, 1e-10)
                for s in starts[b, :int(count[b])].tolist()]
        want = mix_ref(X[b, :n], np.sum(segs, 0) if segs else np.zeros(n), float(snr[b]))
        np.testing.assert_allclose(seg_mixed[b, :n].numpy(), want, rtol=1e-5, atol=1e-5)
        ref = X[b, :n] + 0.5
        gain = np.sqrt((ref ** 2).mean() / max((W[b, 300:300 + n] ** 2).mean(), 1e-20)) if n else 1.0
        np.testing.assert_allclose(matched[b, :n].numpy(), W[b, 300:300 + n] * gain, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cut[b, :n].numpy(), wide[b, 300:300 + n].numpy())
        for t in (mixed, seg_mixed, matched, cut):
            assert (t[b, n:] == 0).all()
        if n > 100 and b not in (5, 6) and int(count[b]) > 0:
            achieved = 10 * np.log10((X[b, :n] ** 2).mean() / ((seg_mixed[b, :n].double().numpy() - X[b, :n]) ** 2).mean())
            assert abs(achieved - float(snr[b])) < 1e-3
    assert (mixed[5] == 0).all() and torch.equal(mixed[6], x[6])  # silent sample: g = 0; silent noise: none added
    if path == "numba":
        with pytest.raises(ValueError, match="do not fit"):
            dsp.mix_segments_at_snr(x, L, data, starts + 20000, count, snr)


def test_fft_convolution_with_indexed_spectra_equals_numpy():
    """fft_convolve_spectra with a bank of spectra and an index per row, on input given
    zero-padded to the FFT size or not: numpy's linear convolution of each row with its
    filter. An index outside the bank is refused."""
    from specstream.functional import dsp

    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 700, generator=g)
    bank = torch.randn(3, 90, generator=g)
    index = torch.tensor([2, 0, 2, 1, 0])
    m = dsp.fast_fft_size(700 + 90 - 1)
    spectra = torch.fft.rfft(bank, m)
    padded = torch.nn.functional.pad(x, (0, m - 700))
    got = dsp.fft_convolve_spectra(x, spectra, 90, m, index=index)
    got_padded = dsp.fft_convolve_spectra(padded, spectra, 90, m, index=index, n=700)
    for i, r in enumerate(index.tolist()):
        want = np.convolve(x[i].double().numpy(), bank[r].double().numpy())
        np.testing.assert_allclose(got[i].numpy(), want, rtol=0, atol=1e-4)
    assert torch.equal(got, got_padded)
    with pytest.raises(IndexError):
        dsp.fft_convolve_spectra(x, spectra, 90, m, index=torch.tensor([0, 1, 2, 3, 0]))


@pytest.mark.parametrize("path", ["numba", "torch"])
def test_filter_rows_in_place_touches_only_its_rows(path):
    """filter_rows_ (the kernel reads and writes the listed rows where they are) equals
    filtfilt / lfilter of the gathered rows; every other row stays bit for bit."""
    import contextlib

    from specstream.functional import cpu_kernels, dsp

    g = torch.Generator().manual_seed(2)
    L = torch.tensor([2000, 1500, 7, 0, 2000, 999])
    x = torch.randn(6, 2000, generator=g) * (torch.arange(2000)[None, :] < L[:, None])
    rows = torch.tensor([4, 0, 2, 3])
    b, a = dsp.biquad("highpass", torch.tensor([300.0, 80.0, 1000.0, 50.0], dtype=torch.float64), SR, 0.7071)
    bp, ap = (torch.tensor(c) for c in dsp.PINK)
    with (cpu_kernels.torch_path() if path == "torch" else contextlib.nullcontext()):
        zero_phase = dsp.filter_rows_(x.clone(), b, a, rows, L)
        causal = dsp.filter_rows_(x.clone(), bp, ap, rows)
    with cpu_kernels.torch_path():  # the reference: the gathered rows through torchaudio's recursion
        want_zp = dsp.filtfilt(x[rows], L[rows], b, a)
        want_c = dsp.lfilter(x[rows], bp, ap)
    torch.testing.assert_close(zero_phase[rows], want_zp, rtol=0, atol=1e-6)
    torch.testing.assert_close(causal[rows], want_c, rtol=0, atol=1e-6)
    others = torch.tensor([1, 5])
    assert torch.equal(zero_phase[others], x[others]) and torch.equal(causal[others], x[others])
    assert not torch.equal(zero_phase[0], x[0])
    if path == "numba":
        with pytest.raises(ValueError, match="distinct"):
            dsp.filter_rows_(x.clone(), bp, ap, torch.tensor([1, 1]))


def test_mixing_kernels_broadcast_like_the_torch_path_and_refuse_what_does_not_fit():
    """One SNR or count for every row is broadcast as the torch path broadcasts it; per-row arguments of another size are refused (the kernels read
    without bounds checks); empty batches give empty results; LogMel takes half-precision
    waves (the centre padding kernel is for float32/64 only)."""
    from specstream.features import LogMel, MelConfig
    from specstream.functional import cpu_kernels, dsp

    g = torch.Generator().manual_seed(3)
    L = torch.tensor([500, 300, 0, 512])
    x = torch.randn(4, 512, generator=g) * (torch.arange(512)[None, :] < L[:, None])
    noise = torch.randn(4, 512, generator=g)
    data = torch.randn(4000, generator=g)
    cases = {
        "scalar snr": lambda: dsp.mix_at_snr(x, noise.clone(), L, torch.tensor(10.0)),
        "scalar count": lambda: dsp.mix_segments_at_snr(x, L, data, torch.tensor([[0, 9], [5, 7], [1, 2], [3, 3]]),
                                                        torch.tensor(2), torch.full((4,), 6.0)),
    }
    for what, fn in cases.items():
        got = fn()
        with cpu_kernels.torch_path():
            want = fn()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=what)
    with pytest.raises(ValueError, match="values for 4 rows"):
        dsp.mix_at_snr(x, noise, L, torch.zeros(3))
    with pytest.raises(ValueError, match="for 4 rows"):
        dsp.mix_at_snr(x, noise[:2].contiguous(), L, torch.zeros(4))
    with pytest.raises(ValueError, match="values for 4 rows"):
        dsp.match_power(noise, x, L[:2])
    with pytest.raises(ValueError, match="for 4 rows"):  # a row's data is cut at that row's length
        dsp.match_power(noise, x[:1], L)
    from specstream.functional import cpu_mixing

    with pytest.raises(ValueError, match="out rows of"):  # the kernel reads y and ref at out's width
        cpu_mixing.level(x[:2], x[:2], L[:2], True, rows=torch.tensor([0, 1]), out=torch.zeros(4, 4000))
    empty = x[:0]
    assert dsp.mix_segments_at_snr(empty, L[:0], data, torch.zeros(0, 2, dtype=torch.int64), L[:0],
                                   torch.zeros(0)).shape == (0, 512)
    assert dsp.mix_at_snr(empty, noise[:0], L[:0], torch.zeros(0)).shape == (0, 512)
    lm = LogMel(MelConfig())
    wave = torch.randn(2, 3000, generator=g)
    for dtype in (torch.float16, torch.bfloat16):
        feats, _ = lm(wave.to(dtype), torch.tensor([3000, 2000]))
        with cpu_kernels.torch_path():
            want, _ = lm(wave.to(dtype), torch.tensor([3000, 2000]))
        assert torch.isfinite(feats).all() and torch.equal(feats, want)


def test_coloured_noise_filters_both_colours_in_one_call_as_each_alone():
    """coloured_noise filters its pink and brown rows in one kernel call with per-row filters:
    each row must equal its colour's filter applied to its own gaussian stream alone (the
    scipy recursion of the colour's taps, to float64 roundoff), white rows untouched, in
    a batch mixing the three colours in any order."""
    from scipy.signal import lfilter as sp_lfilter

    from specstream.functional.dsp import BROWN, PINK, coloured_noise, gaussian_stream

    keys = torch.arange(11, dtype=torch.int64) * 977 + 5
    colour = torch.tensor([2, 0, 1, 1, 2, 0, 2, 1, 0, 2, 1])
    n = 3000
    got = coloured_noise(keys, n, colour)
    white = gaussian_stream(keys, n)
    for r in range(len(keys)):
        c = int(colour[r])
        if c == 0:
            assert torch.equal(got[r], white[r])
            continue
        b, a = (PINK, BROWN)[c - 1]
        b32, a32 = (torch.tensor(v, dtype=torch.float32).double().numpy() for v in (b, a))  # the taps as stored
        want = sp_lfilter(b32, a32, white[r].double().numpy())
        np.testing.assert_allclose(got[r].double().numpy(), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_iir_kernel_zero_past_each_length_and_strided_input():
    """Review findings on the vector-lane IIR kernel: a zero-phase row shorter than the others
    of its unit is 0 past its own length even when its filter is not finite (a non-finite
    filter fed zeros does not give zeros), as the torch path; and rows of a strided
    (non-contiguous) x are read where they are, as from a contiguous copy."""
    from specstream.functional import cpu_kernels

    g = torch.Generator().manual_seed(12)
    x = torch.randn(5, 64, generator=g)
    n = torch.tensor([64, 10, 30, 64, 5])
    b = torch.tensor([[float("inf"), 0.1, 0.0]] * 5, dtype=torch.float64)
    a = torch.tensor([[1.0, -0.5, 0.0]] * 5, dtype=torch.float64)
    got = cpu_kernels.iir_rows(x, b, a, n)
    for r in range(5):
        assert bool((got[r, int(n[r]):] == 0).all()), r
    big = torch.randn(6, 500, generator=g)
    strided = big[:, 100:400]
    bb, aa = torch.tensor([0.2, 0.3, 0.1], dtype=torch.float64), torch.tensor([1.0, -0.4, 0.1], dtype=torch.float64)
    L = torch.tensor([300, 250, 1, 0, 300, 299])
    for lengths in (None, L):
        assert torch.equal(cpu_kernels.iir_rows(strided, bb, aa, lengths),
                           cpu_kernels.iir_rows(strided.contiguous(), bb, aa, lengths))
