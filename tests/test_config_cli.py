"""Config validation, the make-shards CLI, the key-hash RNG."""
import json
import os
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tone
from specstream.augment.random import key_ids, uniform
from specstream.cli import main
from specstream.config import ConfigError, load_config

OK = {"source": {"shards": "x/*.tar"}, "labels": {"num_classes": 3}}


def test_defaults_and_inheritance():
    cfg = load_config({**OK, "decode": {"sample_rate": 8000}, "features": {"n_fft": 256, "hop_length": 80}})
    assert cfg.features.sample_rate == 8000 and cfg.decode.clip_seconds == 1.0
    assert cfg.actors.count == 1 and cfg.actors.num_gpus == 0.0


@pytest.mark.parametrize("bad, where", [
    ({"decode": {"sampel_rate": 16000}}, "decode.sampel_rate: unknown key"),
    ({"decode": {"sample_rate": "16k"}}, "decode.sample_rate: expected int"),
    ({"actors": {"count": 0}}, "actors: count must be >= 1"),
    ({"labels": {"num_classes": 3, "vocab": ["a"]}}, "labels: give exactly one"),
    ({"decode": {"crop": "middle"}}, "decode.crop"),
    ({"features": {"f_max": 9000.0}}, "f_max"),
    ({"bogus": 1}, "bogus: unknown key"),
    ({"source": {"shards": ""}}, "source.shards: required"),
])
def test_bad_configs_name_the_key(bad, where):
    data = json.loads(json.dumps(OK))
    for k, v in bad.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    with pytest.raises(ConfigError, match=where.replace("(", r"\(").replace(")", r"\)")):
        load_config(data)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("source: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(Exception) as e:
        load_config(str(p))
    assert "python/object" in str(e.value)
    p.write_text("source: {shards: 'a/*.tar'}\nlabels: {num_classes: 2}\n")
    assert load_config(str(p)).labels.num_classes == 2


def test_make_shards_cli_folder_labels_and_limits(tmp_path, capsys):
    src = tmp_path / "src"
    for label in ("dog", "cat"):
        (src / label).mkdir(parents=True)
        for i in range(5):
            sf.write(src / label / f"{label}.{i}.wav", tone(0.2, 16000), 16000)
    (src / "cat" / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    rc = main(["make-shards", str(src), str(out), "--max-count", "4", "--quiet", "--format", "flac"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "samples written: 10" in text and "shards written: 3" in text
    names = []
    for f in sorted(os.listdir(out)):
        with tarfile.open(out / f) as tf:
            names += tf.getnames()
    keys = {n.split(".")[0] for n in names}
    assert keys == {f"{lab}/{lab}_{i}" for lab in ("dog", "cat") for i in range(5)}
    assert all(n.endswith((".flac", ".json", ".cls")) for n in names)
    with tarfile.open(out / "shard-000000.tar") as tf:
        m = next(x for x in tf.getmembers() if x.name.endswith(".json"))
        meta = json.loads(tf.extractfile(m).read())
    assert meta["sample_rate"] == 16000 and abs(meta["duration"] - 0.2) < 1e-9 and meta["label"] in ("dog", "cat")


def test_make_shards_jsonl_manifest_with_text(tmp_path):
    from specstream.io.make_shards import make_shards

    src = tmp_path / "a"
    src.mkdir()
    sf.write(src / "one.flac", tone(0.3), 16000)
    with open(tmp_path / "m.jsonl", "w") as f:
        f.write(json.dumps({"path": "one.flac", "label": "x", "text": "hello world", "speaker": "s1"}) + "\n")
    s = make_shards(str(src), str(tmp_path / "o"), manifest=str(tmp_path / "m.jsonl"), progress=False)
    with tarfile.open(s.shards[0]) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    assert files["one.txt"] == b"hello world" and files["one.cls"] == b"x"
    assert json.loads(files["one.json"])["speaker"] == "s1"
    assert files["one.flac"] == (src / "one.flac").read_bytes()  # kept as-is


def test_key_uniforms_are_pure_functions_of_key():
    keys = [f"utt-{i}" for i in range(1000)]
    ids = torch.from_numpy(key_ids(keys))
    u = uniform(7, 3, ids, op=5, n=4)
    assert u.shape == (1000, 4) and float(u.min()) >= 0 and float(u.max()) < 1
    perm = torch.randperm(1000)
    assert torch.equal(uniform(7, 3, ids[perm], op=5, n=4), u[perm])  # batch order is irrelevant
    assert torch.equal(uniform(7, 3, ids[:10], op=5, n=4), u[:10])  # so is batch composition
    for other in (uniform(8, 3, ids, 5, 4), uniform(7, 4, ids, 5, 4), uniform(7, 3, ids, 6, 4)):
        assert (other != u).float().mean() > 0.99
    big = uniform(0, 0, torch.from_numpy(key_ids([str(i) for i in range(20000)])), 0, 8).flatten().numpy()
    hist, _ = np.histogram(big, bins=10, range=(0, 1))
    assert np.all(np.abs(hist / big.size - 0.1) < 0.004)  # ~5 standard deviations per bin
    assert abs(np.corrcoef(big[:-1], big[1:])[0, 1]) < 0.02


def test_every_shipped_config_validates():
    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    names = sorted(f for f in os.listdir(root) if f.endswith((".yaml", ".yml")))
    assert names, "configs/ holds no YAML"
    for name in names:
        cfg = load_config(os.path.join(root, name))
        assert cfg.source.shards
