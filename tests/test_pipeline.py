"""End to end on the session's real local Ray cluster: folder -> shards -> stream -> batches."""
import csv
import json
import os
import time

import numpy as np
import pytest
import ray
import soundfile as sf
import torch

from conftest import fields, flac_bytes, good_sample, run_in_threads, tone, write_shard
from specstream.io.make_shards import make_shards
from specstream.pipeline import build_pipeline, torch_batches

VOCAB = [str(i) for i in range(10)]


def base_config(shards, **over):
    c = {"source": {"shards": shards, "block_rows": 16},
         "labels": {"vocab": VOCAB},
         "actors": {"count": 1, "batch_size": 32}}
    for k, v in over.items():
        c.setdefault(k, {}).update(v)
    return c


def consume(pipe, batch_size=32):
    keys, shapes = [], set()
    for b in torch_batches(pipe.dataset, batch_size=batch_size, device="cpu", ledger=pipe.ledger):
        assert b["features"].dtype == torch.float32 and b["length"].dtype == torch.int64
        assert b["features"].shape[0] == len(b["key"]) == b["target"].shape[0]
        shapes.add(tuple(b["features"].shape[1:]))
        keys.extend(b["key"])
    return keys, shapes


@pytest.mark.parametrize("compute", ["tasks", "actors"])
def test_folder_to_shards_to_stream_reconciles_by_key(ray_session, tmp_path, compute):
    src = tmp_path / "audio"
    src.mkdir()
    rows = []
    for i in range(30):
        name = f"clip_{i:03d}." + ("wav" if i % 3 == 0 else "flac")
        sr = 8000 if i % 5 == 0 else 16000
        sf.write(src / name, tone(0.6 + 0.02 * i, sr, freq=300 + 10 * i), sr)
        rows.append({"path": name, "label": str(i % 10), "text": f"clip {i}"})
    (src / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    rows.append({"path": "broken.wav", "label": "1"})
    rows.append({"path": "absent.flac", "label": "2"})
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "text"])
        w.writeheader()
        w.writerows(rows)
    summary = make_shards(str(src), str(tmp_path / "shards"), manifest=str(tmp_path / "manifest.csv"),
                          max_count=8, progress=False)
    assert summary.files_seen == 32 and summary.samples_written == 30
    assert sorted(p for p, _ in summary.skipped) == ["absent.flac", "broken.wav"]
    assert len(summary.shards) == 4

    pipe = build_pipeline(base_config(os.path.join(tmp_path, "shards", "shard-{000000..000003}.tar"),
                                      actors={"compute": compute}))
    keys, shapes = consume(pipe)
    expected = {f"clip_{i:03d}" for i in range(30)}
    assert sorted(keys) == sorted(expected)  # every sample exactly once
    assert shapes == {(80, 101)}
    report = pipe.report()
    want = {"read": 30, "delivered": 30, "quarantined": 0, "shards": 4, "balanced": True}
    assert fields(report["totals"], want) == want
    assert all(s["passes"] == 1 for s in report["shards"].values())


def test_corrupt_shards_keep_every_good_sample(ray_session, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    good = set()
    # shard 0: truncated in the middle of k0_7's audio
    s0 = [good_sample(f"k0_{i}", i % 10) for i in range(10)]
    write_shard(str(d / "shard-000000.tar"), s0)
    raw = (d / "shard-000000.tar").read_bytes()
    (d / "shard-000000.tar").write_bytes(raw[: raw.index(b"k0_7.flac") + 512 + 500])
    good |= {f"k0_{i}" for i in range(7)}
    # shard 1: one undecodable audio member, one bad JSON, one unknown label
    s1 = [good_sample(f"k1_{i}", i % 10) for i in range(10)]
    s1[2]["flac"] = b"fLaC" + os.urandom(3000)
    s1[5]["json"] = b"{not json"
    s1[8]["cls"] = b"eleven"
    write_shard(str(d / "shard-000001.tar"), s1)
    good |= {f"k1_{i}" for i in range(10)} - {"k1_2", "k1_5", "k1_8"}
    # shard 2: clean
    write_shard(str(d / "shard-000002.tar"), [good_sample(f"k2_{i}", i % 10) for i in range(10)])
    good |= {f"k2_{i}" for i in range(10)}

    pipe = build_pipeline(base_config(str(d)))
    keys, _ = consume(pipe)
    assert sorted(keys) == sorted(good)
    report = pipe.report()
    q = {(os.path.basename(e["shard"]), e["key"]): e for e in report["quarantine"]}
    assert set(q) == {("shard-000000.tar", "k0_7"), ("shard-000001.tar", "k1_2"),
                      ("shard-000001.tar", "k1_5"), ("shard-000001.tar", "k1_8")}
    assert "truncated" in q[("shard-000000.tar", "k0_7")]["reason"]
    assert q[("shard-000001.tar", "k1_2")]["stage"] == "decode"
    assert "invalid JSON" in q[("shard-000001.tar", "k1_5")]["reason"]
    assert "not in the vocabulary" in q[("shard-000001.tar", "k1_8")]["reason"]
    per = {os.path.basename(k): v for k, v in report["shards"].items()}
    assert (per["shard-000000.tar"]["read"], per["shard-000000.tar"]["delivered"]) == (8, 7)
    want = {"read": 10, "delivered": 7, "quarantined": 3, "passes": 1, "balanced": True}
    assert fields(per["shard-000001.tar"], want) == want
    assert report["totals"]["balanced"]


def test_streaming_split_pieces_partition_the_keys(ray_session, clean_shards):
    """equal=False: a consumer may legitimately get every block, so the pieces are checked
    as a partition: disjoint, and together exactly the keys."""
    d, all_keys = clean_shards
    pipe = build_pipeline(base_config(d))
    pieces = pipe.dataset.streaming_split(2, equal=False)

    def run(i):
        return [k for b in torch_batches(pieces[i], batch_size=16, device="cpu", ledger=pipe.ledger)
                for k in b["key"]]

    got = run_in_threads([lambda: run(0), lambda: run(1)], timeout=300)
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(all_keys)  # every key exactly once over both pieces
    assert pipe.report()["totals"]["balanced"]
    # decode.prestart (default): one worker per read task that can run at once was started at
    # build time, its stages built without an error
    started = ray.get(pipe.prestarted, timeout=120)
    assert 1 <= len(started) <= min(len(pipe.shards), int(ray.cluster_resources()["CPU"]))
    assert all(err is None for _, err in started)
    off = build_pipeline(base_config(d, decode={"prestart": False}))
    assert off.prestarted == [] and off.close()["totals"]["read"] == 0
    # close: the final report, then the ledger's process is gone
    final = pipe.close()
    assert final["totals"]["delivered"] == len(all_keys) and final["totals"]["balanced"]
    deadline = time.monotonic() + 60  # ray.kill is asynchronous: calls made before it lands still answer
    while True:
        try:
            ray.get(pipe.ledger.report.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            break
        assert time.monotonic() < deadline, "the ledger actor still answers 60 s after close()"
        time.sleep(0.2)
    assert pipe.close() == final


def test_full_mode_streams_ragged_features(ray_session, tmp_path):
    d = tmp_path / "ragged"
    d.mkdir()
    durations = {}
    samples = []
    for i in range(12):
        sec = 0.3 + 0.1 * i
        durations[f"r{i}"] = sec
        x = tone(sec)
        samples.append({"__key__": f"r{i}", "flac": flac_bytes(x), "cls": str(i % 10).encode()})
    write_shard(str(d / "shard-000000.tar"), samples)
    pipe = build_pipeline(base_config(str(d), decode={"mode": "full"}))
    seen = {}
    for b in torch_batches(pipe.dataset, batch_size=5, device="cpu", ledger=pipe.ledger):
        T = b["features"].shape[-1]
        assert T == int(b["length"].max())
        for k, L in zip(b["key"], b["length"].tolist()):
            seen[k] = L
    assert seen == {k: int(round(s * 16000)) // 160 + 1 for k, s in durations.items()}


def test_multiple_passes_are_counted_per_pass_and_augment_per_epoch(ray_session, clean_shards):
    d, all_keys = clean_shards
    cfg = base_config(d)
    cfg["augment"] = "LD"
    cfg["epoch"] = 5
    pipe = build_pipeline(cfg)
    feats = []
    for p in range(2):
        rows = {}
        for b in torch_batches(pipe.dataset, batch_size=32, device="cpu", ledger=pipe.ledger):
            assert set(b["epoch"].tolist()) == {5 + p}  # base epoch + pass
            rows.update({k: b["features"][i] for i, k in enumerate(b["key"])})
        assert sorted(rows) == sorted(all_keys)
        feats.append(rows)
    differ = sum(not torch.equal(feats[0][k], feats[1][k]) for k in all_keys)
    assert differ > 0.9 * len(all_keys)  # a new epoch draws new augmentation
    report = pipe.report()
    assert report["totals"]["read"] == report["totals"]["delivered"] == 2 * len(all_keys)
    assert {s["passes"] for s in report["shards"].values()} == {2}


def test_ray_train_two_workers(ray_session, clean_shards, tmp_path):
    from specstream.trainer import run_training

    d, all_keys = clean_shards
    pipe = build_pipeline(base_config(d, actors={"num_cpus": 0.5}))
    result = run_training(pipe.dataset, num_classes=10, ledger=pipe.ledger, num_workers=2, epochs=1,
                          batch_size=16, cpus_per_worker=0.5, storage_path=str(tmp_path / "results"))
    assert result.error is None
    history = json.loads(result.metrics["history"])
    assert history[0]["samples"] > 0
    report = pipe.report()
    # equal steps: a rank's batches past the common count are carried (one epoch here: never delivered)
    t = report["totals"]
    assert t["delivered"] + t["carried"] == len(all_keys) and t["balanced"]
    assert t["carried"] < 16 * 2  # at most a batch per rank
    assert os.path.exists(os.path.join(result.checkpoint.path, "model.pt"))


def test_augmented_stream_is_reproducible_by_key_and_logs_params(ray_session, clean_shards):
    d, all_keys = clean_shards

    def run(block_rows, augment, batch_size):
        cfg = base_config(d)
        cfg["source"]["block_rows"] = block_rows
        cfg["augment"] = augment
        cfg["log_params"] = True
        cfg["seed"] = 3
        pipe = build_pipeline(cfg)
        rows = {}
        for b in torch_batches(pipe.dataset, batch_size=batch_size, device="cpu", ledger=pipe.ledger):
            for i, k in enumerate(b["key"]):
                rows[k] = (b["features"][i, :, : b["length"][i]], b["target"][i], json.loads(b["aug_params"][i]))
        assert pipe.report()["totals"]["balanced"]
        return rows

    a = run(16, "LD", 32)
    b = run(7, "LD", 10)  # other blocks, other batches, other neighbours
    assert sorted(a) == sorted(b) == sorted(all_keys)
    for k in all_keys:
        torch.testing.assert_close(a[k][0], b[k][0], rtol=0, atol=1e-4)
        assert a[k][2] == b[k][2]
        assert set(a[k][2]) == {"0:time_warp", "1:freq_mask", "2:time_mask"}
    # time masks really landed: a masked frame holds the sample's mean in every bin
    masked_any = sum(int((a[k][0] == a[k][0][:1]).all(0).any()) for k in all_keys)
    assert masked_any > 0

    mixed = run(16, {"preset": "LB", "ops": [{"op": "mixup", "alpha": 0.4}]}, 32)
    targets = torch.stack([mixed[k][1] for k in all_keys])
    assert targets.shape == (len(all_keys), 10) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(len(all_keys)))
    lam = torch.tensor([mixed[k][2]["3:mixup"]["lam"] for k in all_keys])
    assert ((lam > 0) & (lam < 1)).all()
    for n, k in enumerate(all_keys):
        s, i = (int(v) for v in k[1:].split("_"))
        own = (s * 25 + i) % 10  # the clean_shards label of this key
        top = float(targets[n].max())
        assert float(targets[n, own]) >= float(lam[n]) - 1e-5  # its own label carries >= lambda
        assert abs(top - 1.0) < 1e-5 or abs(top - max(float(lam[n]), 1 - float(lam[n]))) < 1e-5


def test_a_layout_that_cannot_fit_fails_early(ray_session, clean_shards):
    from specstream.config import ConfigError

    d, _ = clean_shards
    with pytest.raises(ConfigError, match="resources: .* but the cluster has 4.0"):
        build_pipeline(base_config(d, actors={"compute": "actors", "count": 3, "num_cpus": 1.0}),
                       reserved_cpus=1.0)
    with pytest.raises(ConfigError, match="GPUs"):
        build_pipeline(base_config(d, actors={"num_gpus": 2.0}))


def test_waveform_augmentation_through_ray_with_banks(ray_session, clean_shards, tmp_path):
    """Banks load once in the featurize actor; every key arrives once with its parameters;
    a missing or empty bank is a ConfigError at build time, before any task runs."""
    from conftest import ALSA, need_recordings
    from specstream.config import ConfigError
    from specstream.rirs import make_rir_bank

    need_recordings(ALSA)
    d, all_keys = clean_shards
    make_rir_bank(str(tmp_path / "rirs"), count=4, seed=1)
    ops = [{"op": "speed", "factors": [0.9, 1.0, 1.1]},
           {"op": "reverb", "bank": str(tmp_path / "rirs"), "p": 0.5},
           {"op": "background_noise", "bank": ALSA + "/Noise.wav", "snr_db": [5, 20]},
           {"op": "noise", "colour": ["pink", "brown"], "snr_db": [10, 30], "p": 0.5},
           {"op": "filter", "p": 0.5}, {"op": "vtlp"}, {"op": "freq_mask", "max_width": 10, "count": 1}]
    cfg = base_config(d, actors={"compute": "actors"})
    cfg.update(augment={"ops": ops}, log_params=True)
    pipe = build_pipeline(cfg)
    seen = {}
    for b in torch_batches(pipe.dataset, batch_size=32, device="cpu", ledger=pipe.ledger):
        for i, k in enumerate(b["key"]):
            seen.setdefault(k, []).append(json.loads(b["aug_params"][i]))
    assert sorted(seen) == sorted(all_keys) and all(len(v) == 1 for v in seen.values())
    assert pipe.report()["totals"]["balanced"]
    factors = {round(v[0]["0:speed"]["factor"], 2) for v in seen.values()}
    assert factors == {0.9, 1.0, 1.1}
    assert {v[0]["1:reverb"]["active"] for v in seen.values()} == {True, False}

    for bad, match in ((str(tmp_path / "nowhere"), "nowhere does not exist"),
                       (str(tmp_path / "rirs" / "*.flac"), "no audio")):
        cfg["augment"] = {"ops": [{"op": "reverb", "bank": bad}]}
        with pytest.raises(ConfigError, match=f"augment \\(reverb\\): bank .*{match}"):
            build_pipeline(cfg)


def test_frame_labels_stream_to_padded_batches(ray_session, tmp_path):
    """Timed events in the shards' json -> frame_target [B, T_max, C] on the delivered
    batches, ragged clips padded with zeros, event onsets where the energy starts."""
    d = tmp_path / "events"
    d.mkdir()
    samples, events = [], {}
    for i in range(10):
        sec, on = 0.8 + 0.1 * i, 0.2 + 0.03 * i
        t = np.arange(int(sec * 16000)) / 16000
        x = np.where((t >= on) & (t < on + 0.3), 0.3 * np.sin(2 * np.pi * 600 * t), 0.0).astype(np.float32)
        events[f"e{i}"] = on
        samples.append({"__key__": f"e{i}", "flac": flac_bytes(x), "cls": str(i % 10).encode(),
                        "json": json.dumps({"events": [[on, on + 0.3, str(i % 10)]]}).encode()})
    write_shard(str(d / "shard-000000.tar"), samples)
    cfg = base_config(str(d), decode={"mode": "full"}, labels={"frame_field": "json:events"})
    cfg["augment"] = {"ops": [{"op": "time_warp", "W": 5}]}
    pipe = build_pipeline(cfg)
    seen = set()
    for b in torch_batches(pipe.dataset, batch_size=4, device="cpu", ledger=pipe.ledger):
        ft = b["frame_target"]
        assert ft.shape == (len(b["key"]), b["features"].shape[-1], 10)
        for i, k in enumerate(b["key"]):
            n, c = int(b["length"][i]), int(k[1:]) % 10
            assert torch.all(ft[i, n:] == 0) and ft[i, :n, c].sum() > 20  # ~30 frames of event
            energy = b["features"][i, :, :n].exp().sum(0)
            e_on = int(torch.nonzero(energy > 0.1 * energy.max())[0])
            l_on = int(torch.nonzero(ft[i, :n, c])[0])
            assert abs(e_on - l_on) <= 2 and abs(l_on - events[k] * 100) <= 6
            seen.add(k)
    assert seen == set(events) and pipe.report()["totals"]["balanced"]


def _loss_start_end(history):
    """(mean loss over the first quarter of epoch 0's steps, over the last quarter of the
    last epoch's steps), from rank 0's history."""
    assert [h["epoch"] for h in history] == list(range(len(history))) and all(h["samples"] > 0 for h in history)
    return history[0]["loss_first_quarter"], history[-1]["loss_last_quarter"]


def assert_learns(history):
    """The loss starts near chance for 10 classes (ln 10 = 2.30) and ends at least 0.4 below
    (a quarter of an epoch is >= 64 samples: the batch-to-batch spread of the mean loss is
    about 0.1), and the last epoch's accuracy is well above chance (0.1)."""
    start, end = _loss_start_end(history)
    assert start > 1.9, history
    assert end < start - 0.4, [(round(h["loss_first_quarter"], 3), round(h["loss_last_quarter"], 3)) for h in history]
    assert history[-1]["accuracy"] > 0.3, [h["accuracy"] for h in history]


DEMO_PER_CLASS, DEMO_EPOCHS = 64, 8  # 320 clips per worker and epoch: 5 full batches of 64


def test_demo_loss_falls(ray_session, tmp_path, monkeypatch):
    """`specstream demo` (run_demo, what the command runs and prints) on a small corpus:
    every sample delivered each epoch, and rank 0's training loss falls."""
    from specstream.demo import format_summary, run_demo
    from specstream.synth import CLASSES

    monkeypatch.setenv("SPECSTREAM_CACHE", str(tmp_path / "cache"))
    s = run_demo(per_class=DEMO_PER_CLASS, epochs=DEMO_EPOCHS, workers=2, seed=0, progress=False)
    n = DEMO_PER_CLASS * len(CLASSES)
    # equal steps: rows left past the last common step of the last epoch are carried, not lost
    assert s["balanced"] and s["read"] == s["delivered"] + s["carried"] == DEMO_EPOCHS * n and s["quarantined"] == 0
    assert s["carried"] < 2 * 64  # less than a batch per rank
    assert_learns(s["history_rank0"])
    text = format_summary(s)
    h0, hn = s["history_rank0"][0], s["history_rank0"][-1]
    assert f"epoch 0 (rank 0): loss {h0['loss_first_quarter']:.3f}" in text
    assert f"epoch {hn['epoch']} (rank 0): loss {hn['loss_first_quarter']:.3f} -> {hn['loss_last_quarter']:.3f}" in text


def test_train_script_loss_falls(ray_session, tmp_path, capsys):
    """pipelines/train.py with the shipped reference-corpus config on shards the test writes
    (the demo's ten synthetic sound classes, integer labels as that config expects)."""
    import importlib.util

    from specstream.synth import CLASSES, synth_clip

    root = os.path.join(os.path.dirname(__file__), "..")
    rng = np.random.default_rng(7)
    d = tmp_path / "shards"
    d.mkdir()
    n = 0
    for s in range(4):
        samples = []
        for i in range(160):
            c = (s * 160 + i) % len(CLASSES)
            x = synth_clip(CLASSES[c], rng, seconds=float(rng.uniform(0.8, 1.2)))
            samples.append({"__key__": f"t{s}_{i:03d}", "flac": flac_bytes(x), "cls": str(c).encode()})
        write_shard(str(d / f"shard-{s:06d}.tar"), samples)
        n += len(samples)
    spec = importlib.util.spec_from_file_location("specstream_train_script", os.path.join(root, "pipelines", "train.py"))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    metrics, report = tmp_path / "metrics.json", tmp_path / "report.json"
    epochs = 8
    rc = train.main(["--config", os.path.join(root, "configs", "reference-corpus.yaml"),
                     "--set", f"source.shards={d}", "--workers", "2", "--epochs", str(epochs),
                     "--cpus-per-worker", "0.25", "--lr", "0.01", "--report", str(report), "--metrics", str(metrics),
                     "--storage-path", str(tmp_path / "results")])
    assert rc == 0
    m = json.loads(metrics.read_text())
    assert m["totals"]["balanced"] and m["totals"]["read"] == m["totals"]["delivered"] == epochs * n
    assert json.loads(report.read_text())["totals"] == m["totals"]
    assert_learns(m["history_rank0"])
    out = capsys.readouterr().out
    last = m["history_rank0"][-1]
    assert f"epoch {epochs - 1} rank 0: loss {last['loss_first_quarter']:.3f} -> {last['loss_last_quarter']:.3f}" in out


def test_logged_params_replay_each_row_through_the_pipeline(ray_session, clean_shards):
    """log_params: every delivered row's aug_params JSON (per-element noise and frame choices
    are recorded as stream keys, nothing is dropped) replays to the features the pipeline
    delivered: on that sample alone, or, when mixup or overlay mixed it, together with the
    rows it needs (Policy.replay_set: its partners, theirs, ... found by key id among every
    delivered row), in another order than the featurize batch's."""
    from specstream.augment import Policy, build_policy
    from specstream.features import LogMel, finalize
    from specstream.io.samples import read_shard
    from specstream.pipeline.stages import DecodeStage

    d, all_keys = clean_shards
    augment = {"ops": [{"op": "wave_gain", "p": 0.7}, {"op": "noise", "colour": ["pink", "white"], "p": 0.5},
                       {"op": "vtlp"}, {"op": "time_warp", "W": 5}, {"op": "frame_drop_dup", "p": 0.5},
                       {"op": "mixup", "alpha": 1.0, "p": 0.4}, {"op": "overlay", "snr_db": [0, 10], "p": 0.3},
                       {"op": "feature_noise", "colour": "pink", "p": 0.5}, {"op": "gain"},
                       {"op": "freq_mask", "max_width": 8}, {"op": "time_mask", "max_width": 10}]}
    cfg = base_config(d)
    cfg.update(augment=augment, log_params=True, seed=5)
    cfg["decode"] = {"mode": "full"}
    pipe = build_pipeline(cfg)
    got = {}
    for b in torch_batches(pipe.dataset, batch_size=16, device="cpu", ledger=pipe.ledger):
        for i, k in enumerate(b["key"]):
            got[k] = (b["features"][i, :, : b["length"][i]], json.loads(b["aug_params"][i]))
    assert sorted(got) == sorted(all_keys)
    decode = DecodeStage(pipe.config.to_dict())
    logmel = LogMel(pipe.config.features)
    policy = build_policy(augment, num_classes=len(VOCAB))
    clips = {}  # key -> (waveform, samples, class): every shard, for the partners
    for s in range(4):
        for t, _, _ in read_shard(os.path.join(d, f"shard-{s:06d}.tar")):
            dec = decode(t)
            for i, k in enumerate(dec["key"]):
                n = int(dec["num_samples"][i])
                clips[k] = (torch.from_numpy(dec["audio"][i][:n]), n, int(dec["target"][i]))
    keys = sorted(got)
    records = [got[k][1] for k in keys]
    checked, with_partners = 0, 0
    for k in keys:
        if not k.startswith("s1_"):
            continue
        need = [keys[j] for j in Policy.replay_set(records, keys.index(k))][::-1]
        with_partners += len(need) > 1
        n = torch.tensor([clips[j][1] for j in need])
        wave = torch.zeros(len(need), int(n.max()))
        for r, j in enumerate(need):
            wave[r, : clips[j][1]] = clips[j][0]
        params = Policy.params_from_rows([got[j][1] for j in need])
        out = policy.featurize(wave, n, logmel, 16000, params=params,
                               targets=torch.tensor([clips[j][2] for j in need]))
        r = need.index(k)
        feats = finalize(out.features, out.lengths, pipe.config.features)[r, :, : int(out.lengths[r])]
        torch.testing.assert_close(feats, got[k][0], rtol=0, atol=1e-4)
        checked += 1
    assert checked == 25 and with_partners >= 3, (checked, with_partners)
    acted = {name for k in all_keys for name, p in got[k][1].items() if p["active"]}
    assert acted == set(got[all_keys[0]][1])  # every op acted on some row
