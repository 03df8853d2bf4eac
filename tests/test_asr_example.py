"""The ASR example end to end, as a user runs it: the data scripts write small shard sets
(synthetic speech from espeak-ng and flite, real human speech from pocketsphinx-testdata and
the Asterisk prompts, the duration corpus), then ``pipelines/train_ctc.py --quick`` trains
through Ray Train in its own Ray instance (a subprocess) and scores every test set."""
import glob
import json
import os
import tarfile

import pytest

from conftest import ASTERISK, POCKETSPHINX, need_engines, need_recordings, run_script as run

pytestmark = pytest.mark.slow


def samples(shard):
    """{key: {ext: bytes}} of one tar."""
    out = {}
    with tarfile.open(shard) as t:
        for m in t.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = t.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def asr_data(tmp_path_factory):
    need_engines()
    need_recordings(POCKETSPHINX, ASTERISK)
    d = tmp_path_factory.mktemp("asr")
    out = run(["scripts/make_asr_corpus.py", str(d / "train"), "--count", "64", "--per-shard", "16"])
    assert "utterances written: 64 of 64 in 4 shards" in out and "skipped: 0" in out
    out_test = run(["scripts/make_asr_testset.py", str(d / "test"), "--asterisk", "12"])
    return d, out, out_test


def test_corpus_scripts_write_transcribed_shards(asr_data):
    import io

    import soundfile as sf

    from specstream.tokenizers import build_tokenizer

    d, out, out_test = asr_data
    assert "espeak-ng" in out and "flite" in out  # both engines speak
    tok = build_tokenizer("char")
    train = {k: v for s in sorted(glob.glob(str(d / "train" / "shard-*.tar"))) for k, v in samples(s).items()}
    assert len(train) == 64
    for s in train.values():
        text = s["txt"].decode()
        assert text == text.strip().lower() and not any(c.isdigit() for c in text)
        tok.encode(text)  # in the char alphabet
        info = sf.info(io.BytesIO(s["flac"]))
        assert info.samplerate == 16000 and 0.3 < info.duration < 20
        meta = json.loads(s["json"])
        assert meta["engine"] in ("espeak-ng", "flite") and meta["text"] == text
    assert len({json.loads(s["json"])["voice"] for s in train.values()}) >= 10

    # the human test sets: every utterance with audio and a transcript, the rest named with a reason
    assert "cards: 5 utterances" in out_test and "librivox: 5 utterances" in out_test
    assert "tidigits: 1 utterances" in out_test and "asterisk: 12 utterances" in out_test
    assert "tidigits: 31 x only MFCC features (.mfc) in the package, no waveform" in out_test
    cards = samples(str(d / "test" / "cards" / "shard-000000.tar"))
    assert cards["cards_001"]["txt"] == b"ten of clubs"
    tidigits = samples(str(d / "test" / "tidigits" / "shard-000000.tar"))
    assert [s["txt"] for s in tidigits.values()] == [b"two nine three four zero"]
    for name in ("cards", "tidigits", "librivox", "asterisk"):
        for s in samples(str(d / "test" / name / "shard-000000.tar")).values():
            tok.encode(s["txt"].decode())
            assert sf.info(io.BytesIO(s["flac"])).samplerate == 16000


def test_duration_corpus_spread(tmp_path):
    need_recordings(ASTERISK)
    out = run(["scripts/make_duration_corpus.py", str(tmp_path), "--count", "24", "--per-shard", "12"])
    assert "utterances written: 24 of 24 in 2 shards" in out and "lognormal median 12.0 s, sigma 0.45" in out
    got = {k: v for s in sorted(glob.glob(str(tmp_path / "shard-*.tar"))) for k, v in samples(s).items()}
    durations = [json.loads(s["json"])["duration"] for s in got.values()]
    assert all(1.0 <= x <= 35.0 for x in durations)
    assert max(durations) / min(durations) > 2  # a spread, not one length
    assert all(s["txt"].strip() for s in got.values())


def test_train_ctc_quick_loss_falls_and_cer_per_set(asr_data, tmp_path):
    d, _, _ = asr_data
    out = run(["pipelines/train_ctc.py", "--quick", "--train-shards", str(d / "train"),
               "--test-shards", str(d / "test"), "--out", str(tmp_path)], timeout=300)
    res = json.loads((tmp_path / "results.json").read_text())
    h = res["history_rank0"]
    assert len(h) == res["epochs"] >= 2
    assert h[-1]["loss"] < h[0]["loss"], h  # the loss falls
    assert res["train_report"]["balanced"] and res["train_report"]["quarantined"] == 0
    assert set(res["test"]) == {"cards", "tidigits", "librivox", "asterisk"}
    for name, s in res["test"].items():
        assert s["utterances"] > 0 and s["ref_chars"] > 0 and 0.0 <= s["cer"] and s["examples"]
        assert f"{name}" in out and "CER" in out
    assert res["test"]["cards"]["utterances"] == 5 and res["test"]["tidigits"]["utterances"] == 1
    assert res["test_report"]["balanced"] and res["test_report"]["quarantined"] == 0
    assert os.path.getsize(tmp_path / "model.pt") > 0
