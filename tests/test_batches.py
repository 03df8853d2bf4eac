"""What goes into each batch: shuffle buffer over interleaved shards, weighted sources, duration
bucketing, sequence targets (tokens) and equal steps on every rank."""
import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import flac_bytes, good_sample, tone, write_shard, write_shard_set
from specstream.io.samples import ReaderOptions
from specstream.io.shards import Storage
from specstream.pipeline.compose import DurationBatcher, batch_of, estimate_boundaries, padding_stats, rows_of
from specstream.pipeline.plan import ReadPlan, SourceShards
from specstream.pipeline.readtask import task_blocks

VOCAB = [str(i) for i in range(10)]


def read_task(plan: ReadPlan, slot: int, epoch: int, block_rows: int = 16):
    """One read task's blocks, without Ray (no ledger): [(key, shard), ...] per block."""
    return [list(zip(b.column("key").to_pylist(), b.column("shard").to_pylist()))
            for b in task_blocks(plan, slot, epoch, ReaderOptions(block_rows=block_rows))]


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory):
    """16 shards x 40 short clips."""
    return write_shard_set(tmp_path_factory.mktemp("sixteen"), 16, 40,
                           lambda s, i: good_sample(f"s{s:02d}_{i:02d}", (s + i) % 10, seconds=0.1))


def mkdir(p):
    os.makedirs(p, exist_ok=True)
    return p


def urls_of(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d))


# -- read tasks (no Ray) ---------------------------------------------------------------------------------------------

def test_shuffle_buffer_mixes_shards_is_seeded_and_exact(sixteen):
    d, keys = sixteen
    plan = ReadPlan([SourceShards("a", urls_of(d), Storage())], interleave=8, shuffle_buffer=200, seed=5)
    assert plan.tasks == 2
    ep0 = [read_task(plan, s, 0) for s in range(plan.tasks)]
    rows0 = [r for task in ep0 for b in task for r in b]
    assert sorted(k for k, _ in rows0) == sorted(keys)  # every sample once per epoch
    first = ep0[0][0] + ep0[0][1] + ep0[0][2] + ep0[0][3]  # the task's first 64 rows
    assert len({s for _, s in first}) >= 8
    assert ep0 == [read_task(plan, s, 0) for s in range(plan.tasks)]  # a retried task emits the same rows
    ep1 = [read_task(plan, s, 1) for s in range(plan.tasks)]
    assert sorted(k for t in ep1 for b in t for k, _ in b) == sorted(keys)
    assert [k for k, _ in ep1[0][0]] != [k for k, _ in ep0[0][0]]  # another epoch, another order
    plain = ReadPlan([SourceShards("a", urls_of(d), Storage())])
    assert [k for b in read_task(plain, 0, 0) for k, _ in b] == [k for k in keys if k.startswith("s00_")]


def test_weighted_sources_within_two_percent(tmp_path):
    a, _ = write_shard_set(mkdir(tmp_path / "a"), 4, 100, lambda s, i: good_sample(f"a{s}_{i}", 1, seconds=0.05))
    b, _ = write_shard_set(mkdir(tmp_path / "b"), 3, 30, lambda s, i: good_sample(f"b{s}_{i}", 2, seconds=0.05))
    c, _ = write_shard_set(mkdir(tmp_path / "c"), 2, 500, lambda s, i: good_sample(f"c{s}_{i}", 3, seconds=0.05))
    plan = ReadPlan([SourceShards("a", urls_of(a), Storage(), 0.5), SourceShards("b", urls_of(b), Storage(), 0.3),
                     SourceShards("c", urls_of(c), Storage(), 0.2)], interleave=2, shuffle_buffer=50, seed=1)
    rows = [k for s in range(plan.tasks) for blk in read_task(plan, s, 0) for k, _ in blk]
    n = Counter(k[0] for k in rows)
    assert n["a"] == 400  # the first source defines the epoch: each of its samples once
    assert len({k for k in rows if k[0] == "a"}) == 400
    total = sum(n.values())
    for name, w in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(n[name] / total - w) <= 0.02, (name, n[name] / total)
    assert len({k for k in rows if k[0] == "b"}) == 90 and n["b"] > 90  # over-sampled: cycles its shards
    assert len({k for k in rows if k[0] == "c"}) == n["c"] < 1000  # under-sampled: part of it


# -- composition (no Ray) -------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.5, 35.0), min_size=1, max_size=300), st.floats(20.0, 120.0), st.integers(1, 12),
       st.sampled_from([None, 30.0]))
def test_duration_batches_respect_the_budget_and_keep_every_row(durations, budget, nb, q):
    hop = 0.01
    rows = [{"key": str(i), "length": np.int64(round(d / hop))} for i, d in enumerate(durations)]
    batcher = DurationBatcher(budget, hop, num_buckets=nb, buffer=50, quadratic_duration=q)
    batches = list(batcher(iter(rows)))
    assert sorted(r["key"] for b in batches for r in b) == sorted(r["key"] for r in rows)
    for b in batches:
        longest = max(int(r["length"]) for r in b) * hop
        if len(b) > 1:  # a sample over the budget alone is a batch of one
            assert len(b) * batcher.cost(longest) <= budget + 1e-9
        # one bucket per batch
        assert len({np.searchsorted(batcher.edges, int(r["length"]) * hop, side="right") for r in b}) == 1


def test_estimated_boundaries_split_total_duration_evenly():
    rng = np.random.default_rng(0)
    d = np.clip(rng.lognormal(np.log(10), 0.6, 5000), 1, 35)
    edges = estimate_boundaries(d, 5)
    assert len(edges) == 4 and all(x < y for x, y in zip(edges, edges[1:]))
    per = [d[(d > lo) & (d <= hi)].sum() for lo, hi in zip([0] + edges, edges + [1e9])]
    assert max(per) / min(per) < 1.2
    assert estimate_boundaries(np.ones(100), 4) == []  # one duration: one bucket


def test_padding_stats_and_row_round_trip():
    s = padding_stats([[10, 5], [3]])
    assert s["frames"] == 18 and s["padded_frames"] == 23 and s["max_batch_padded_frames"] == 20
    assert s["padding_fraction"] == pytest.approx(5 / 23)
    batch = {"key": np.array(["a", "b"], dtype=object), "length": np.array([3, 2]),
             "features": np.empty(2, dtype=object)}
    batch["features"][:] = [np.ones((4, 3)), np.ones((4, 2))]
    back = batch_of(rows_of(batch))
    assert back["length"].tolist() == [3, 2] and back["features"][1].shape == (4, 2)
    assert list(back["key"]) == ["a", "b"]


# -- through Ray -----------------------------------------------------------------------------------------------------

def cfg_for(d, **over):
    c = {"source": {"shards": d, "block_rows": 16}, "labels": {"vocab": VOCAB}, "decode": {"num_cpus": 0.5},
         "actors": {"num_cpus": 0.5}}
    for k, v in over.items():
        c[k] = v
    return c


def epoch_batches(stream):
    return [(list(b["key"]), list(b["shard"])) for b in stream]


def test_pipeline_shuffles_across_shards_and_epochs(ray_session, sixteen):
    from specstream.pipeline import TrainStream, build_pipeline

    d, keys = sixteen
    pipe = build_pipeline(cfg_for(d, sampling={"shuffle_buffer": 200, "interleave": 8},
                                  augment={"ops": [{"op": "mixup", "alpha": 0.4}]}, log_params=True))
    stream = TrainStream(pipe.dataset, pipe.config, ledger=pipe.ledger, batch_size=64, device="cpu")
    e0, e1 = epoch_batches(stream), epoch_batches(stream)
    for e in (e0, e1):
        assert sorted(k for b, _ in e for k in b) == sorted(keys)
    assert max(len(set(s)) for _, s in e0[:2]) >= 8  # the first batches mix many shards
    assert {frozenset(b) for b, _ in e0} != {frozenset(b) for b, _ in e1}
    report = pipe.report()
    assert report["totals"]["balanced"] and report["totals"]["delivered"] == 2 * len(keys)


def test_an_epoch_left_part_way_does_not_unsettle_the_next(ray_session, sixteen):
    """A consumer that leaves an epoch early (max steps, a preview): the read tasks still
    running are cancelled before they finish; the next epoch is still every sample once, all
    of one epoch (the read tasks take the pass the consumer began)."""
    from specstream.pipeline import TrainStream, build_pipeline

    d, keys = sixteen
    pipe = build_pipeline(cfg_for(d, sampling={"shuffle_buffer": 50, "interleave": 4}))
    stream = TrainStream(pipe.dataset, pipe.config, ledger=pipe.ledger, batch_size=8, device="cpu")
    for _ in stream:
        break
    got, epochs = [], set()
    for b in stream:
        got += b["key"]
        epochs.update(b["epoch"].tolist())
    assert sorted(got) == sorted(keys) and epochs == {1}


def test_pipeline_weighted_sources_report(ray_session, tmp_path):
    from specstream.pipeline import TrainStream, build_pipeline

    a, akeys = write_shard_set(mkdir(tmp_path / "a"), 4, 60, lambda s, i: good_sample(f"a{s}_{i}", 1, seconds=0.05))
    b, _ = write_shard_set(mkdir(tmp_path / "b"), 2, 200, lambda s, i: good_sample(f"b{s}_{i}", 2, seconds=0.05))
    cfg = cfg_for(a, source=[{"name": "main", "shards": a, "weight": 0.75, "block_rows": 16},
                             {"name": "extra", "shards": b, "weight": 0.25}],
                  sampling={"shuffle_buffer": 64, "interleave": 2})
    pipe = build_pipeline(cfg)
    got = [k for bk, _ in epoch_batches(TrainStream(pipe.dataset, pipe.config, ledger=pipe.ledger, device="cpu"))
           for k in bk]
    assert sorted(k for k in got if k[0] == "a") == sorted(akeys)
    assert abs(sum(k[0] == "b" for k in got) / len(got) - 0.25) <= 0.02
    report = pipe.report()
    t, src = report["totals"], report["sources"]
    assert t["balanced"] and t["read"] == t["delivered"] == len(got)
    assert src["main"]["delivered"] == 240 and src["extra"]["delivered"] == len(got) - 240
    assert all(row["source"] == "extra" for name, row in report["shards"].items() if "/b/" in name)
    # the under-sampled source's reads were stopped on purpose: sampled, not unread
    extra = [row for name, row in report["shards"].items() if "/b/" in name]
    assert any(row.get("sampled") for row in extra) and all(row["unread"] is None for row in extra)


def lognormal_corpus(d, shards=4, per=30, seed=0):
    rng = np.random.default_rng(seed)
    keys = []
    for s in range(shards):
        samples = []
        for i in range(per):
            sec = float(np.clip(rng.lognormal(np.log(1.0), 0.7), 0.2, 4.0))
            k = f"v{s}_{i}"
            samples.append({"__key__": k, "flac": flac_bytes(tone(sec, freq=300 + 20 * i)), "cls": b"1",
                            "txt": f"sample {s} {i}".encode()})
            keys.append(k)
        write_shard(os.path.join(d, f"shard-{s:06d}.tar"), samples)
    return str(d), keys


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    return lognormal_corpus(tmp_path_factory.mktemp("varied"))


def test_bucketing_bounds_padded_frames_and_cuts_padding(ray_session, varied):
    from specstream.pipeline import TrainStream, build_pipeline

    d, keys = varied
    base = cfg_for(d, decode={"mode": "full", "num_cpus": 0.5, "max_seconds": 5.0},
                   sampling={"shuffle_buffer": 60, "interleave": 2})
    fixed = build_pipeline(base)
    s_fixed = TrainStream(fixed.dataset, fixed.config, ledger=fixed.ledger, batch_size=16, device="cpu")
    list(s_fixed)
    bucketed = build_pipeline({**base, "sampling": {**base["sampling"], "bucketing": {
        "max_duration_s": 12.0, "num_buckets": 6, "buffer": 40}}})
    s_b = TrainStream(bucketed.dataset, bucketed.config, ledger=bucketed.ledger, device="cpu")
    seen = []
    for batch in s_b:
        n, T = batch["features"].shape[0], batch["features"].shape[-1]
        assert n * T <= 12.0 / 0.01 + n or n == 1  # padded frames within the budget (frames = seconds / hop + 1)
        seen += batch["key"]
    assert sorted(seen) == sorted(keys)
    assert s_b.last_epoch["padding_fraction"] < 0.5 * s_fixed.last_epoch["padding_fraction"]
    assert s_b.last_epoch["samples"] == s_fixed.last_epoch["samples"] == len(keys)
    assert bucketed.report()["totals"]["balanced"]


def test_tokens_and_mixup_partners_travel_with_rows(ray_session, varied):
    from specstream.pipeline import TrainStream, build_pipeline
    from specstream.tokenizers import build_tokenizer

    d, keys = varied
    pipe = build_pipeline(cfg_for(d, decode={"mode": "full", "num_cpus": 0.5, "max_seconds": 5.0},
                                  labels={"field": "txt", "tokenizer": "char"},
                                  sampling={"shuffle_buffer": 40, "interleave": 2},
                                  augment={"ops": [{"op": "mixup", "alpha": 1.0}]}, log_params=True))
    tok = build_tokenizer("char")
    mixed = 0
    for b in TrainStream(pipe.dataset, pipe.config, ledger=pipe.ledger, batch_size=8, device="cpu"):
        assert "target" not in b and b["tokens"].dtype == torch.int64
        for i, k in enumerate(b["key"]):
            s, n = k[1:].split("_")
            own = tok.decode(b["tokens"][i, : b["token_length"][i]].tolist())
            assert own == f"sample {s} {n}" and (b["tokens"][i, b["token_length"][i]:] == 0).all()
            partner = tok.decode(b["mix_tokens"][i, : b["mix_token_length"][i]].tolist())
            params = json.loads(b["aug_params"][i])["0:mixup"]
            lam = float(b["mix_lambda"][i])
            if lam < 1:
                mixed += 1
                assert lam == pytest.approx(params["lam"], abs=1e-6)
            else:
                assert partner == own
    assert mixed > len(keys) // 2
    assert pipe.report()["totals"]["balanced"]


def test_two_ranks_same_steps_with_bucketing_and_all_reduce(ray_session, varied, tmp_path):
    """A 2-worker TorchTrainer all-reduces every step over bucketed variable-length data: the
    ranks take the same number of steps each epoch (no hang), and the report balances with
    the rows a rank held past the last common step counted as carried."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from specstream.pipeline import build_pipeline, stream_data_config

    d, keys = varied
    pipe = build_pipeline(cfg_for(d, decode={"mode": "full", "num_cpus": 0.25, "max_seconds": 5.0},
                                  actors={"num_cpus": 0.25},
                                  sampling={"shuffle_buffer": 30, "interleave": 2,
                                            "bucketing": {"max_duration_s": 8.0, "num_buckets": 4, "buffer": 20}}),
                          reserved_cpus=1.0)
    out = str(tmp_path / "steps")
    os.makedirs(out)

    def loop(config):
        import torch.distributed as dist

        import ray.train

        from specstream.pipeline import TrainStream

        stream = TrainStream(ray.train.get_dataset_shard("train"), config["cfg"], ledger=config["ledger"],
                             device="cpu")
        rank = ray.train.get_context().get_world_rank()
        log = []
        for epoch in range(3):
            steps = 0
            for batch in stream:
                t = batch["features"].sum().reshape(1)
                dist.all_reduce(t)  # a DDP step: hangs if one rank has left
                steps += 1
            log.append({"steps": steps, **{k: stream.last_epoch[k] for k in ("samples", "carried_in",
                                                                             "carried_out")}})
        with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as f:
            json.dump(log, f)

    trainer = TorchTrainer(loop, train_loop_config={"cfg": pipe.config.to_dict(), "ledger": pipe.ledger, "out": out},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                           datasets={"train": pipe.dataset}, dataset_config=stream_data_config(),
                           run_config=RunConfig(storage_path=str(tmp_path / "results"), name="steps"))
    result = trainer.fit()
    assert result.error is None
    logs = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]
    for e in range(3):
        assert logs[0][e]["steps"] == logs[1][e]["steps"] > 0
    t = pipe.report()["totals"]
    assert t["balanced"] and t["read"] == 3 * len(keys)
    assert t["carried"] == sum(log[-1]["carried_out"] for log in logs)
    assert t["delivered"] + t["carried"] == 3 * len(keys)
    assert t["carried"] <= 2 * 8  # what is left after the dealt last steps: a few rows per rank


@pytest.mark.parametrize("over, message", [
    ({"sampling": {"bucketing": {"max_duration_s": 60}}}, "needs decode.mode: full"),
    ({"sampling": {"interleave": 0}}, "interleave >= 1"),
    ({"source": [{"name": "a", "shards": "x", "weight": 0}]}, "source[0].weight: must be > 0"),
    ({"source": [{"name": "a", "shards": "x"}, {"shards": "y"}]}, "distinct name"),
    ({"source": [{"name": "a", "shards": "x"}, {"name": "b", "shards": "y", "block_rows": 8}]},
     "source[1].block_rows: the reader's settings come from the first source"),
    ({"decode": {"mode": "full"}, "sampling": {"bucketing": {"num_buckets": 3, "boundaries_s": [5.0, 2.0]}}},
     "increasing positive edges"),
    ({"labels": {"field": "cls", "tokenizer": "char"}}, "set labels.field to txt"),
    ({"labels": {"field": "txt", "tokenizer": "char", "num_classes": 3}}, "no class vocabulary"),
    ({"labels": {"field": "txt", "tokenizer": "bpe"}}, "expected char, vocab:FILE or sentencepiece:MODEL"),
    ({"labels": {"field": "txt", "tokenizer": "char"},
      "augment": {"ops": [{"op": "mixup"}, {"op": "mixup"}]}}, "at most one mixup"),
])
def test_sampling_and_tokenizer_config_errors_name_the_key(over, message):
    from specstream.config import ConfigError, load_config

    cfg = {"source": {"shards": "x"}, "labels": {"vocab": VOCAB}}
    cfg.update(over)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(cfg)
