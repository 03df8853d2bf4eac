"""Mid-epoch resume: the stream state, restore on another number of workers, errors."""
import json
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import good_sample, write_shard_set
from specstream.config import ConfigError
from specstream.resume import add_indices, contains, count, load_state, merge_states

VOCAB = [str(i) for i in range(10)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=200), st.lists(st.integers(0, 300), max_size=100))
def test_ranges_hold_exactly_the_indices_added(a, b):
    r = add_indices(add_indices([], a), b)
    assert all(x[0] < x[1] for x in r) and all(x[1] < y[0] for x, y in zip(r, r[1:]))  # sorted, merged
    assert {i for i in range(302) if contains(r, i)} == set(a) | set(b)
    assert count(r) == len(set(a) | set(b))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_shard_set(tmp_path_factory.mktemp("resume"), 8, 40,
                           lambda s, i: good_sample(f"r{s}_{i:02d}", (s + i) % 10, seconds=0.1))


def cfg_for(d, **over):
    c = {"source": {"shards": d, "block_rows": 16}, "labels": {"vocab": VOCAB}, "decode": {"num_cpus": 0.5},
         "sampling": {"shuffle_buffer": 60, "interleave": 2}, "seed": 5, "log_params": True,
         "augment": {"ops": [{"op": "freq_mask", "max_width": 10}, {"op": "time_mask", "max_width": 5}]}}
    c.update(over)
    return c


def rows_of(pipe, stop_after=None, batch_size=8, by_epoch=False):
    """{key: aug_params} delivered (``by_epoch``: {(key, epoch): ...}: rows of two epochs), and
    the stream (stopped once ``stop_after`` rows are consumed)."""
    from specstream.pipeline import TrainStream

    stream = TrainStream(pipe.dataset, pipe.config, ledger=pipe.ledger, batch_size=batch_size, device="cpu")
    got = {}
    for b in stream:
        for k, p, e in zip(b["key"], b["aug_params"], b["epoch"].tolist()):
            k = (k, e) if by_epoch else k
            assert k not in got
            got[k] = json.loads(p)
        if stop_after is not None and len(got) >= stop_after:
            break
    return got, stream


def test_resume_delivers_the_rest_exactly_with_the_same_augmentation(ray_session, corpus):
    """(a) the union of both runs is every key once; (c) the resumed run reads only the rest
    (the consumed samples are passed over on the headers, never decoded); (d) each remaining
    sample's recorded augmentation equals the uninterrupted run's."""
    from specstream.pipeline import build_pipeline

    d, keys = corpus
    whole, _ = rows_of(build_pipeline(cfg_for(d)))
    assert sorted(whole) == sorted(keys)
    n = random.Random(0).randrange(40, 250)
    first, stream = rows_of(build_pipeline(cfg_for(d)), stop_after=n)
    state = stream.state_dict()
    assert state["samples"] == len(first) and state["epoch"] == 0
    assert sum(len(r) for r in state["consumed"].values()) < len(first)  # ranges, not a list of samples
    pipe = build_pipeline(cfg_for(d), resume=json.loads(json.dumps(state)))
    rest, _ = rows_of(pipe)
    assert sorted(list(first) + list(rest)) == sorted(keys)
    assert all(rest[k] == whole[k] for k in rest)
    t = pipe.report()["totals"]
    assert t["balanced"] and t["read"] == len(keys) - len(first) and t["skipped"] == len(first)


def test_a_run_resumed_twice_keeps_what_each_run_consumed(ray_session, corpus):
    """Preempted twice in one epoch: the second run's state holds what the first run consumed
    too, so the third run delivers exactly the rest."""
    from specstream.pipeline import build_pipeline

    d, keys = corpus
    first, stream = rows_of(build_pipeline(cfg_for(d)), stop_after=60)
    s1 = stream.state_dict()
    second, stream = rows_of(build_pipeline(cfg_for(d), resume=s1), stop_after=90)
    s2 = stream.state_dict()
    assert s2["epoch"] == 0 and s2["samples"] == len(first) + len(second)
    third, _ = rows_of(build_pipeline(cfg_for(d), resume=json.loads(json.dumps(s2))))
    assert sorted(list(first) + list(second) + list(third)) == sorted(keys)


def test_rows_carried_past_the_epoch_end_are_in_the_state_and_delivered_on_resume(ray_session, corpus):
    """drop_last holds an epoch's last partial batch for the next epoch. A state taken at the
    epoch's end names those rows as pending; the resumed run delivers them (with their own
    epoch's augmentation) besides the next epoch, and its own end state holds its own."""
    from specstream.pipeline import build_pipeline

    d, keys = corpus
    whole, _ = rows_of(build_pipeline(cfg_for(d)))  # epoch 0, nothing held back
    cfg = cfg_for(d, deliver={"drop_last": True})
    first, stream = rows_of(build_pipeline(cfg), batch_size=7)
    held = len(keys) % 7
    state = json.loads(json.dumps(stream.state_dict()))
    assert state["epoch"] == 1 and state["samples"] == 0 and len(first) == len(keys) - held
    assert sum(b - a for sh in state["pending"]["0"].values() for a, b in sh) == held
    pipe = build_pipeline(cfg, resume=state)
    second, stream = rows_of(pipe, batch_size=7, by_epoch=True)
    pending = [k for k, e in second if e == 0]
    assert sorted(list(first) + pending) == sorted(keys)  # epoch 0: every key once over both runs
    assert all(second[(k, 0)] == whole[k] for k in pending)  # drawn as in epoch 0
    end = stream.state_dict()
    assert end["epoch"] == 2 and list(end.get("pending", {})) == ["1"]
    assert len([k for k, e in second if e == 1]) + sum(
        b - a for sh in end["pending"]["1"].values() for a, b in sh) == len(keys)
    report = pipe.report()
    t = report["totals"]
    assert t["balanced"] and t["read"] == len(keys) + held and t["carried"] == (len(keys) + held) % 7
    # the re-read of the held samples is no pass, and what it passed over is not this run's skipped
    assert t["skipped"] == 0 and {row["passes"] for row in report["shards"].values()} == {1}


def test_state_after_a_whole_epoch_starts_the_next(ray_session, corpus):
    from specstream.pipeline import build_pipeline

    d, keys = corpus
    pipe = build_pipeline(cfg_for(d))
    _, stream = rows_of(pipe)
    state = stream.state_dict()
    assert state["epoch"] == 1 and state["consumed"] == {} and state["samples"] == 0
    again, _ = rows_of(build_pipeline(cfg_for(d), resume=state))
    assert sorted(again) == sorted(keys)
    assert all(p["0:freq_mask"] for p in again.values())


def test_elastic_two_ranks_then_one(ray_session, corpus, tmp_path):
    """Run 1: a 2-worker TorchTrainer stops mid-epoch at the same step on both ranks and saves
    the merged state; run 2 resumes in one process: every key of the epoch exactly once."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from specstream.pipeline import build_pipeline, stream_data_config
    from specstream.runner import run

    d, keys = corpus
    cfg = cfg_for(d)
    pipe = build_pipeline(cfg, reserved_cpus=1.0)
    out = str(tmp_path)

    def loop(config):
        import ray.train

        from specstream.pipeline import TrainStream
        from specstream.resume import save_state

        stream = TrainStream(ray.train.get_dataset_shard("train"), config["cfg"], ledger=config["ledger"],
                             batch_size=8, device="cpu")
        rank = ray.train.get_context().get_world_rank()
        seen = []
        for step, batch in enumerate(stream):
            seen += batch["key"]
            if step == 5:
                break
        state = stream.state_dict()  # a collective: every rank calls it
        with open(os.path.join(config["out"], f"keys{rank}.txt"), "w") as f:
            f.write("\n".join(seen))
        if rank == 0:
            save_state(state, os.path.join(config["out"], "state.json"))

    result = TorchTrainer(loop, train_loop_config={"cfg": pipe.config.to_dict(), "ledger": pipe.ledger, "out": out},
                          scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                          datasets={"train": pipe.dataset}, dataset_config=stream_data_config(),
                          run_config=RunConfig(storage_path=str(tmp_path / "results"), name="resume")).fit()
    assert result.error is None
    before = [k for r in range(2) for k in open(os.path.join(out, f"keys{r}.txt")).read().split()]
    assert len(before) == 2 * 6 * 8
    summary = run(cfg, progress=False, resume=os.path.join(out, "state.json"),
                  keys_out=os.path.join(out, "after.txt"))
    after = open(os.path.join(out, "after.txt")).read().split()
    assert sorted(before + after) == sorted(keys)
    assert summary["report"]["totals"]["balanced"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a JSON stream state"),
    ('{"weights": [1, 2]}', "not a specstream stream state"),
    ('{"format": "specstream-stream-state", "version": 99}', "version 99"),
    ('{"format": "specstream-stream-state", "version": 1, "fingerprint": "x", "epoch": 0, "consumed": {"a": [[5, 2]]}}',
     "malformed"),
    ('{"format": "specstream-stream-state", "version": 1, "fingerprint": "other", "epoch": 0, "consumed": {}}',
     "another config or corpus"),
])
def test_a_bad_state_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_state(str(path), "abc")
    with pytest.raises(ConfigError, match="no such file"):
        load_state(str(tmp_path / "none.json"), "abc")


def test_a_state_of_another_config_is_refused_by_the_pipeline(ray_session, corpus):
    from specstream.pipeline import build_pipeline

    d, _ = corpus
    _, stream = rows_of(build_pipeline(cfg_for(d)), stop_after=8)
    state = stream.state_dict()
    with pytest.raises(ConfigError, match="another config or corpus"):
        build_pipeline(cfg_for(d, seed=6), resume=state)
    assert merge_states([state, state])["consumed"] == state["consumed"]


def test_train_script_checkpoints_mid_epoch_and_resumes_on_fewer_workers(ray_session, corpus, tmp_path, capsys):
    """pipelines/train.py: checkpoints every 3 steps carry the stream state; a run resumed from
    the first (mid-epoch) one on 1 worker instead of 2 reads only what was not consumed."""
    import glob
    import importlib.util

    d, keys = corpus
    root = os.path.join(os.path.dirname(__file__), "..")
    spec = importlib.util.spec_from_file_location("specstream_train_script_resume",
                                                  os.path.join(root, "pipelines", "train.py"))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    common = ["--config", os.path.join(root, "configs", "reference-corpus.yaml"), "--set", f"source.shards={d}",
              "--set", "deliver.batch_size=16", "--set", "source.block_rows=16", "--epochs", "1",
              "--cpus-per-worker", "0.25"]
    rc = train.main(common + ["--workers", "2", "--checkpoint-every", "3", "--report", str(tmp_path / "r1.json"),
                              "--storage-path", str(tmp_path / "run1")])
    assert rc == 0
    states = []
    for c in glob.glob(str(tmp_path / "run1" / "**" / "stream_state.json"), recursive=True):
        s = json.load(open(c))
        states.append((s["epoch"], s["samples"], os.path.dirname(c)))
    mid = sorted(s for s in states if s[0] == 0 and s[1] > 0)
    assert mid and mid[0][1] == 2 * 3 * 16  # both ranks, 3 steps of 16
    assert any(s[0] == 1 and s[1] == 0 for s in states)  # the epoch's end: the next epoch, nothing consumed
    rc = train.main(common + ["--workers", "1", "--resume-from", mid[0][2], "--report", str(tmp_path / "r2.json"),
                              "--storage-path", str(tmp_path / "run2")])
    assert rc == 0
    t = json.load(open(tmp_path / "r2.json"))["totals"]
    assert t["skipped"] == 96 and t["read"] == len(keys) - 96 and t["balanced"]
    assert "resuming epoch 0" in capsys.readouterr().out


def _marked(mark: str):
    """The processes of one job: every process started under it (the driver, its Ray
    cluster's GCS and raylet, Ray workers) inherits SPECSTREAM_TEST_JOB=mark."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("SPECSTREAM_TEST_JOB") == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


def _kill_job(pid: int, mark: str) -> None:
    """SIGKILL the driver's process group and every process of its Ray cluster, until none is
    left (a raylet may start a worker while the others are being killed)."""
    import signal
    import time

    import psutil

    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        left = _marked(mark)
        if not left:
            return
        assert time.monotonic() < deadline, f"processes of the killed job still alive: {left}"
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=2)


def _checkpoints(storage: str):
    """[(epoch, samples, dir)] of the complete checkpoints (weights, optimizer, stream state)
    under a train.py storage path; a checkpoint cut by the kill is not one."""
    import glob

    out = []
    for path in glob.glob(os.path.join(storage, "**", "stream_state.json"), recursive=True):
        d = os.path.dirname(path)
        try:
            s = json.load(open(path))
        except (OSError, ValueError):
            continue
        if all(os.path.exists(os.path.join(d, f)) for f in ("model.pt", "optimizer.pt")):
            out.append((s["epoch"], s["samples"], d))
    return sorted(out)


def _keys(folder: str):
    """[(epoch, step, key)] every rank trained on (pipelines/train.py --keys-out)."""
    import glob

    rows = []
    for path in glob.glob(os.path.join(folder, "keys-rank*.txt")):
        for line in open(path):
            if line.strip():
                e, s, k = line.split()
                rows.append((int(e), int(s), k))
    return rows


@pytest.mark.slow
def test_a_job_killed_with_sigkill_resumes_from_its_last_checkpoint_on_three_workers(corpus, tmp_path):
    """(b) pipelines/train.py on 2 workers, in its own Ray cluster, checkpointing every 2 steps,
    is killed with SIGKILL mid-epoch: the driver and every process of its cluster at once.
    Restarted from the last complete checkpoint on 3 workers: the keys consumed before that
    checkpoint are not delivered again, and every other key of the epoch is delivered once
    (or carried past the epoch's end by equal steps, and counted so)."""
    import subprocess
    import sys
    import time
    import uuid

    d, keys = corpus
    root = os.path.join(os.path.dirname(__file__), "..")
    mark = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(SPECSTREAM_TEST_JOB=mark, RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_AUTH_MODE="disabled")
    common = [sys.executable, os.path.join(root, "pipelines", "train.py"),
              "--config", os.path.join(root, "configs", "reference-corpus.yaml"), "--set", f"source.shards={d}",
              "--set", "deliver.batch_size=8", "--set", "source.block_rows=8", "--set", "sampling.shuffle_buffer=40",
              "--epochs", "1", "--cpus-per-worker", "0.25"]
    run1 = str(tmp_path / "run1")
    log1 = open(tmp_path / "run1.log", "w")
    job = subprocess.Popen(common + ["--workers", "2", "--checkpoint-every", "2", "--storage-path", run1,
                                     "--keys-out", str(tmp_path / "keys1"), "--report", str(tmp_path / "r1.json")],
                           env=env, start_new_session=True, stdout=log1, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not any(e == 0 and n > 0 for e, n, _ in _checkpoints(run1)):
            assert job.poll() is None, open(tmp_path / "run1.log").read()[-3000:]
            assert time.monotonic() < deadline, "no mid-epoch checkpoint within 300 s"
            time.sleep(0.1)
    finally:
        _kill_job(job.pid, mark)  # the driver and the Ray processes that left its process group
        job.wait()
    epoch0 = [c for c in _checkpoints(run1) if c[0] == 0 and c[1] > 0]
    _, done, last = epoch0[-1]
    trained = _keys(str(tmp_path / "keys1"))
    assert len({k for _, _, k in trained}) < len(keys), "the job finished its epoch before the kill"
    step = done // (2 * 8)  # 2 ranks x batches of 8 per step
    before = [k for e, s, k in trained if e == 0 and s <= step]
    assert len(before) == len(set(before)) == done

    log2 = open(tmp_path / "run2.log", "w")
    rc = subprocess.run(common + ["--workers", "3", "--resume-from", last, "--storage-path", str(tmp_path / "run2"),
                                  "--keys-out", str(tmp_path / "keys2"), "--report", str(tmp_path / "r2.json")],
                        env=env, start_new_session=True, stdout=log2, stderr=subprocess.STDOUT, timeout=300).returncode
    assert rc == 0, open(tmp_path / "run2.log").read()[-3000:]
    after = [k for _, _, k in _keys(str(tmp_path / "keys2"))]
    t = json.load(open(tmp_path / "r2.json"))["totals"]
    assert len(after) == len(set(after))  # once
    assert not set(after) & set(before)  # consumed before the checkpoint: not again
    assert set(after) | set(before) <= set(keys)
    assert len(after) + t["carried"] == len(keys) - done  # every other key: delivered, or carried and counted
    assert t["skipped"] == done and t["read"] == len(keys) - done and t["balanced"]
    assert "resuming epoch 0" in open(tmp_path / "run2.log").read()


def _two_ranks_pending(rank: int, port: int, out: str) -> None:
    """One of two ranks (gloo on the CPU, no Ray): TrainStream with equal steps and drop_last
    over 3 epochs of random sizes, from a stand-in source; after every epoch the state's
    pending rows must be exactly the earlier-epoch rows no rank has delivered."""
    import random

    import numpy as np
    import torch.distributed as dist

    from specstream.pipeline.stream import TrainStream

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)

    class Source:
        def __init__(self, per_epoch):
            self.per_epoch, self.calls = per_epoch, 0

        def iter_batches(self, batch_size, batch_format, prefetch_batches):
            rows = self.per_epoch[self.calls]
            self.calls += 1
            for i in range(0, len(rows), batch_size):
                c = rows[i:i + batch_size]
                yield {k: (np.stack([r[k] for r in c]) if k == "features" else np.array([r[k] for r in c]))
                       for k in c[0]}

    bad = []
    for trial in range(40):
        rnd = random.Random(trial)
        bs = rnd.randint(2, 5)
        sizes = [[rnd.randint(0, 13) for _ in range(3)] for _ in range(2)]
        per = [[dict(key=f"e{e}r{rank}_{i:03d}", shard=f"s{rank}e{e}", index=i, epoch=e, length=3,
                     features=np.zeros((2, 3), np.float32)) for i in range(sizes[rank][e])] for e in range(3)]
        stream = TrainStream(Source(per), None, batch_size=bs, device="cpu", equal_steps=True)
        stream.drop_last = True
        got = set()
        for epoch in range(3):
            for b in stream:
                got |= set(zip(b["shard"], b["index"].tolist(), b["epoch"].tolist()))
            state = stream.state_dict()
            every = [None, None]
            dist.all_gather_object(every, got)
            delivered = set().union(*every)
            pending = {(s, i, int(e)) for e, shards in (state.get("pending") or {}).items()
                       for s, r in shards.items() for a, b2 in r for i in range(a, b2)}
            held = {(s, int(i), int(e)) for b in stream.carry for s, i, e in zip(b["shard"], b["index"], b["epoch"])}
            everyone = [None, None]
            dist.all_gather_object(everyone, held)
            held = set().union(*everyone)
            if pending & delivered or pending != held:
                bad.append((trial, epoch, sorted(pending & delivered), sorted(held ^ pending)))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(bad, f)
    dist.destroy_process_group()


def test_pending_rows_are_exactly_the_held_rows_no_rank_delivered(tmp_path):
    """Equal steps deal a rank's rows held over from the last epoch to other ranks: the state
    must not name a row as pending once any rank delivered it (it would be trained on twice
    after a resume), and must name every row still held."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "bad.json")
    mp.spawn(_two_ranks_pending, args=(port, out), nprocs=2)
    assert json.load(open(out)) == []
