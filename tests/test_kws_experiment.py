"""The robustness experiment (pipelines/kws_experiment.py): its test-condition kernels
against their definitions, the forced alignment of the real digit strings, and a
``--quick`` run end to end in its own Ray instance (synthesis, make-shards, the real
pipeline with every arm's augmentation, real human test speech under every condition)."""
import importlib.util
import json
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import ASTERISK, POCKETSPHINX, ROOT, need_engines, need_recordings, run_script

pytestmark = pytest.mark.slow


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
    pytest.importorskip("pocketsphinx", reason="pip install 'specstream[experiment]'")
    audio = kws.read_audio(os.path.join(POCKETSPHINX, "tidigits", "dhd.2934z.raw"))
    words = kws.align(audio, "two nine three four zero")
    assert [w for w, _, _ in words] == ["two", "nine", "three", "four", "zero"]
    for (_, s, e), (_, s2, _) in zip(words, words[1:] + [(None, len(audio), None)]):
        assert 0.15 * 16000 < e - s < 0.8 * 16000 and e <= s2
    cut = kws.aligned_digits("t", audio, "two nine three four zero")
    assert [v[0] for v in cut.values()] == ["two", "nine", "three", "four", "zero"]


def test_quick_experiment_end_to_end(kws, tmp_path):
    need_engines()
    need_recordings(POCKETSPHINX, ASTERISK)
    pytest.importorskip("pocketsphinx", reason="pip install 'specstream[experiment]'")
    noise = tmp_path / "my-noise"
    noise.mkdir()
    rng = np.random.default_rng(3)
    sf.write(noise / "hum.wav", (0.1 * np.sin(2 * np.pi * 50 * np.arange(32000) / 16000)
                                 + 0.02 * rng.standard_normal(32000)).astype(np.float32), 16000)
    out = tmp_path / "kws"
    stdout = run_script(["pipelines/kws_experiment.py", "--out", str(out), "--quick",
                         "--extra-test-noise", str(noise)], timeout=600)
    r = json.loads((out / "results.json").read_text())
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
        rep = run["report"]
        assert rep["balanced"] and rep["quarantined"] == 0
        assert rep["delivered"] == rep["read"] == s["epochs"] * s["train_count"]
        assert [h["samples"] for h in run["history"]] == [s["train_count"]] * s["epochs"]
    # the arms really differ: the same seed, data and model, different augmentation
    assert len({json.dumps(x["accuracy"], sort_keys=True) for x in r["runs"]}) > 1
    assert r["arms"]["none"] is None and r["arms"]["specaugment"] == {"preset": "adaptive"}
    assert [o["op"] for o in r["arms"]["wave+spec+mixup"]["ops"]][-1] == "mixup"
    # the model learns its own domain: held-out synthetic digits well above chance (10%)
    none = next(x for x in r["runs"] if x["arm"] == "none")
    assert none["accuracy"]["synthetic (held out)"] > 0.5
    table = (out / "results.md").read_text()
    for arm in arms:
        assert f"| {arm} |" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results.json" in stdout
