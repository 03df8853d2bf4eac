"""The robustness experiment (pipelines/kws_experiment.py): its test-condition kernels
against their definitions, the forced alignment of the real digit strings, what keeps the
test conditions unseen in training, and a ``--quick`` run end to end in its own Ray
instance (synthesis, make-shards, the real pipeline with every arm's augmentation, real
human test speech under every condition, a noise bank given as shards)."""
import glob
import hashlib
import importlib.util
import json
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import ASTERISK, POCKETSPHINX, ROOT, need_engines, need_module, need_recordings, run_script

pytestmark = pytest.mark.slow
EXPERIMENT = "pip install 'specstream[experiment]'"


@pytest.fixture(scope="module")
def kws():
    spec = importlib.util.spec_from_file_location("kws_experiment", os.path.join(ROOT, "pipelines",
                                                                                  "kws_experiment.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tone(freq, n=16000, sr=16000, amp=0.3):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr + 0.5)).astype(np.float32)  # no zero sample


def test_mix_snr_reaches_the_snr_over_the_word(kws):
    rng = np.random.default_rng(0)
    clip = kws.place(tone(440, 6000), 5000)
    span = kws.word_span(clip)
    assert span == (5000, 11000)
    noise = rng.standard_normal(7000).astype(np.float32)  # shorter than the clip: looped
    for snr in (0.0, 5.0, 10.0):
        y = kws.mix_snr(clip, span, noise, snr, rng)
        added = (y - clip).astype(np.float64)
        measured = 10 * np.log10(np.mean(clip[5000:11000].astype(np.float64) ** 2) / np.mean(added ** 2))
        assert abs(measured - snr) < 0.01
        assert np.all(added != 0)  # noise everywhere, silence included


def test_telephone_band(kws):
    def gain_db(freq):
        x = tone(freq)
        y = kws.telephone(x)
        assert y.shape == x.shape
        mid = slice(4000, 12000)
        return 10 * np.log10(np.mean(y[mid].astype(np.float64) ** 2) / np.mean(x[mid].astype(np.float64) ** 2))

    assert abs(gain_db(1000)) < 1.5  # in the band: mu-law noise and the edges' ripple only
    assert gain_db(100) < -20
    assert gain_db(5000) < -40  # above 4 kHz nothing survives the 8 kHz channel


def test_reverberate_keeps_level_and_direct_path(kws):
    rng = np.random.default_rng(1)
    clip = kws.place(tone(300, 4000), 3000)
    delta = np.zeros(800, np.float32)
    delta[120] = 0.5  # a pure delayed direct path: aligned, rescaled, the clip again
    np.testing.assert_allclose(kws.reverberate(clip, delta), clip, atol=1e-6)
    rir = np.concatenate([np.zeros(50), [1.0], rng.standard_normal(3000) * np.exp(-np.arange(3000) / 600)])
    y = kws.reverberate(clip, rir.astype(np.float32))
    assert y.shape == clip.shape
    assert np.mean(y ** 2) == pytest.approx(np.mean(clip ** 2), rel=1e-4)
    assert np.abs(y[:3000]).max() == 0  # nothing before the direct sound
    assert np.abs(y[7000:9000]).max() > 0.01  # the tail rings past the tone's end


def test_forced_alignment_cuts_the_real_digit_strings(kws):
    need_recordings(POCKETSPHINX)
    need_module("pocketsphinx", EXPERIMENT)
    audio = kws.read_audio(os.path.join(POCKETSPHINX, "tidigits", "dhd.2934z.raw"))
    words = kws.align(audio, "two nine three four zero")
    assert [w for w, _, _ in words] == ["two", "nine", "three", "four", "zero"]
    for (_, s, e), (_, s2, _) in zip(words, words[1:] + [(None, len(audio), None)]):
        assert 0.15 * 16000 < e - s < 0.8 * 16000 and e <= s2
    cut = kws.aligned_digits("t", audio, "two nine three four zero")
    assert [v[0] for v in cut.values()] == ["two", "nine", "three", "four", "zero"]


def test_asterisk_digits_labels(kws):
    need_recordings(ASTERISK)
    words, notes = kws.asterisk_digits()
    assert notes["distinct_recordings"] == 11
    spoken = {k.rsplit("-", 1)[1]: label for k, (label, _) in words.items()}
    assert spoken == {**{d: d for d in kws.DIGITS}, "oh": "zero"}


def test_test_conditions_are_unseen_and_independent(kws, tmp_path, monkeypatch):
    """What keeps the test unseen: the training filter has no band-pass (the telephone
    band), the babble says no digit or a word like one, test rooms are not training rooms,
    and adding --extra-test-noise changes no other condition's audio."""
    need_recordings(POCKETSPHINX, ASTERISK)
    policy = kws.arm_policy("wave+spec", str(tmp_path))
    filt = [o for o in policy["ops"] if o["op"] == "filter"]
    assert filt and all(o["kind"] == "lowpass" for o in filt)
    assert not set(kws.BABBLE_WORDS) & (set(kws.WORD_TO_DIGIT) | {"to", "too", "for", "won", "ate"})
    need_module("pyroomacoustics", EXPERIMENT)
    kws.make_rirs(str(tmp_path / "train-rirs"), 3, 0, (0.2, 0.9))
    kws.make_rirs(str(tmp_path / "test-rirs"), 3, 1000, (0.4, 1.2))

    def digests(d):
        return {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in glob.glob(str(d / "*.wav"))}

    assert len(digests(tmp_path / "train-rirs")) == len(digests(tmp_path / "test-rirs")) == 3
    assert not digests(tmp_path / "train-rirs") & digests(tmp_path / "test-rirs")
    noise = tmp_path / "extra"
    noise.mkdir()
    sf.write(noise / "n.wav", np.random.default_rng(2).standard_normal(8000).astype(np.float32) * 0.1, 16000)
    sets = {"a": {"w0": ("one", kws.place(tone(300, 5000))), "w1": ("two", kws.place(tone(700, 7000)))}}
    captured = {}

    def capture(folder, clips, out, seed=0):
        captured[os.path.basename(out)] = {k: x.copy() for k, (_, x) in clips.items()}
        return len(clips)

    monkeypatch.setattr(kws, "write_clips", capture)
    kws.make_test_conditions(str(tmp_path / "t1"), sets, 2, str(tmp_path / "test-rirs"), None)
    alone = dict(captured)
    captured.clear()
    kws.make_test_conditions(str(tmp_path / "t2"), sets, 2, str(tmp_path / "test-rirs"), str(noise))
    assert set(captured) == set(alone) | {"extra_noise_10_dB", "extra_noise_5_dB", "extra_noise_0_dB"}
    for cond, clips in alone.items():
        assert clips.keys() == captured[cond].keys()
        for k in clips:
            np.testing.assert_array_equal(clips[k], captured[cond][k], err_msg=f"{cond} {k}")
    # every noisy copy names its noise, and both test noises are used
    assert {k.rsplit("__", 1)[1] for k in alone["noise_5_dB"]} == {"librivox-babble", "asterisk-monkeys"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    need_engines()
    need_recordings(POCKETSPHINX, ASTERISK)
    for m in ("pocketsphinx", "pyroomacoustics", "matplotlib"):
        need_module(m, EXPERIMENT)
    d = tmp_path_factory.mktemp("kws")
    src = d / "noise-src"
    src.mkdir()
    rng = np.random.default_rng(3)
    sf.write(src / "hum.wav", (0.1 * np.sin(2 * np.pi * 50 * np.arange(32000) / 16000)
                               + 0.02 * rng.standard_normal(32000)).astype(np.float32), 16000)
    sf.write(src / "hiss.wav", (0.05 * rng.standard_normal(16000)).astype(np.float32), 16000)
    run_script(["-m", "specstream.cli", "make-shards", str(src), str(d / "noise-shards")])
    out = d / "out"
    stdout = run_script(["pipelines/kws_experiment.py", "--out", str(out), "--quick",
                         "--extra-test-noise", str(d / "noise-shards")], timeout=600)
    return out, json.loads((out / "results.json").read_text()), stdout


def test_quick_experiment_end_to_end(quick_run):
    out, r, stdout = quick_run
    s = r["settings"]
    arms = ["none", "specaugment", "wave+spec", "wave+spec+mixup"]
    conds = {"clean", "telephone", "reverb", "noise 10 dB", "noise 5 dB", "noise 0 dB", "extra noise 10 dB",
             "extra noise 5 dB", "extra noise 0 dB", "synthetic (held out)"}
    assert set(r["conditions"]) == conds
    # the real words: every distinct asterisk digit recording (0-9 and "oh"), the five TIDIGITS
    # words and the seven digit words of the cards recordings
    words = {k: len(v) for k, v in r["real_words"].items()}
    assert words == {"asterisk": 11, "tidigits": 5, "cards": 7}
    real = sum(words.values())
    for c in conds - {"synthetic (held out)"}:
        copies = 1 if c in ("clean", "telephone") else s["variants"]
        assert r["clips"][c] == real * copies
        assert r["by_set"][c] == {k: v * copies for k, v in words.items()}
    assert r["clips"]["synthetic (held out)"] == s["dev_count"]
    assert sorted((x["arm"], x["seed"]) for x in r["runs"]) == sorted((a, 0) for a in arms)
    for run in r["runs"]:
        assert set(run["accuracy"]) == conds and all(0 <= a <= 1 for a in run["accuracy"].values())
        assert set(run["per_noise"]["noise 5 dB"]) == {"librivox-babble", "asterisk-monkeys"}
        assert set(run["per_noise"]["extra noise 5 dB"]) <= {"extra-0", "extra-1"}
        rep = run["report"]
        assert rep["balanced"] and rep["quarantined"] == 0
        assert rep["delivered"] == rep["read"] == s["epochs"] * s["train_count"]
        assert [h["samples"] for h in run["history"]] == [s["train_count"]] * s["epochs"]
    # the model learns its own domain: held-out synthetic digits well above chance (10%)
    none = next(x for x in r["runs"] if x["arm"] == "none")
    assert none["accuracy"]["synthetic (held out)"] > 0.5
    table = (out / "results.md").read_text()
    for arm in arms:
        assert f"| {arm} |" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results.json" in stdout


def test_each_arm_applied_its_ops(quick_run):
    """The rows of the first epoch say which ops were active (log_params): each arm's own
    ops, at their probabilities (binomial bounds over the training clips)."""
    _, r, _ = quick_run
    n = r["settings"]["train_count"]
    tol = 5 * (0.25 / n) ** 0.5
    active = {x["arm"]: x["ops_active_epoch0"] for x in r["runs"]}
    assert active["none"] == {}
    assert active["specaugment"] == {"freq_mask": 1.0, "time_mask": 1.0}
    wave = {"speed": 1.0, "reverb": 0.5, "background_noise": 0.6, "noise": 0.3, "filter": 0.3, "vtlp": 1.0,
            "freq_mask": 1.0, "time_mask": 1.0}
    for arm, ops in (("wave+spec", wave), ("wave+spec+mixup", dict(wave, mixup=1.0))):
        assert set(active[arm]) == set(ops), arm
        for op, p in ops.items():
            assert abs(active[arm][op] - p) <= tol, (arm, op, active[arm][op])


def test_drop_leaves_ops_out_of_the_waveform_arms(kws):
    full = [o["op"] for o in kws.arm_policy("wave+spec+mixup", "d")["ops"]]
    ablated = [o["op"] for o in kws.arm_policy("wave+spec+mixup", "d", drop=["reverb", "vtlp"])["ops"]]
    assert ablated == [op for op in full if op not in ("reverb", "vtlp")] and "mixup" in ablated
    assert kws.arm_policy("specaugment", "d", drop=["reverb"]) == {"preset": "adaptive"}
    with pytest.raises(ValueError, match="time_warp"):
        kws.arm_policy("wave+spec", "d", drop=["time_warp"])
