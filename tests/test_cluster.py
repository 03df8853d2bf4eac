"""Multi-node layout on the suite's two-node Ray cluster (ray.cluster_utils.Cluster: a CPU
head and a node with a logical GPU), actor crashes, and per-epoch shard order."""
import json
import os

import pytest
import ray

from conftest import fields, good_sample, write_shard_set
from specstream.pipeline import build_pipeline, torch_batches

VOCAB = [str(i) for i in range(10)]


def nodes(cluster):
    head = cluster.head_node.node_id
    others = [n.node_id for n in cluster.list_all_nodes() if n.node_id != head]
    return head, others[0]


def layout(shards, **over):
    """Read+decode pinned to CPU nodes, featurize actors on GPU nodes (a GPU share each)."""
    c = {"source": {"shards": shards, "block_rows": 10},
         "labels": {"vocab": VOCAB},
         "decode": {"num_cpus": 0.5, "resources": {"cpu_node": 0.01}},
         "actors": {"count": 1, "num_gpus": 0.5, "num_cpus": 0.5, "batch_size": 16},
         "augment": "SM"}
    for k, v in over.items():
        c[k] = {**c.get(k, {}), **v} if isinstance(v, dict) else v
    return c


@ray.remote(num_cpus=0.25)
class Consumer:
    """A trainer stand-in on some node: iterates its streaming_split piece."""

    def run(self, piece, ledger):
        keys = []
        for b in torch_batches(piece, batch_size=8, device="cpu", ledger=ledger):
            assert b["features"].shape[1:] == (80, 101)
            keys.extend(b["key"])
        return ray.get_runtime_context().get_node_id(), keys


def test_read_on_cpu_node_featurize_on_gpu_node_split_to_consumers_on_both(ray_cluster, clean_shards):
    d, all_keys = clean_shards
    head, gpu_node = nodes(ray_cluster)
    pipe = build_pipeline(layout(d))
    pieces = pipe.dataset.streaming_split(2, equal=False)
    consumers = [Consumer.options(resources={res: 0.01}).remote() for res in ("cpu_node", "gpu_node")]
    results = ray.get([c.run.remote(p, pipe.ledger) for c, p in zip(consumers, pieces)], timeout=300)
    assert [r[0] for r in results] == [head, gpu_node]  # one consumer on each node
    got = [r[1] for r in results]
    # equal=False: one consumer may take every block; together they are a partition
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(all_keys)  # every key exactly once
    report = pipe.report()
    assert report["nodes"] == {"read": [head], "featurize": [gpu_node]}
    want = {"read": 100, "delivered": 100, "quarantined": 0, "shards": 4, "balanced": True}
    assert fields(report["totals"], want) == want


def test_two_worker_torch_trainer_on_the_multi_node_layout(ray_cluster, clean_shards, tmp_path):
    from specstream.trainer import run_training

    d, all_keys = clean_shards
    head, gpu_node = nodes(ray_cluster)
    pipe = build_pipeline(layout(d), reserved_cpus=1.0)
    result = run_training(pipe.dataset, num_classes=10, ledger=pipe.ledger, num_workers=2, epochs=2,
                          batch_size=16, cpus_per_worker=0.5, storage_path=str(tmp_path / "results"))
    assert result.error is None
    history = json.loads(result.metrics["history"])
    assert [h["epoch"] for h in history] == [0, 1] and all(h["samples"] > 0 for h in history)
    report = pipe.report()
    # Ray Train shards the stream between the two workers: per shard and pass, every sample
    # is delivered to exactly one of them
    assert report["totals"]["read"] == report["totals"]["delivered"] == 2 * len(all_keys)
    assert report["totals"]["balanced"] and {s["passes"] for s in report["shards"].values()} == {2}
    assert report["nodes"]["featurize"] == [gpu_node] and report["nodes"]["read"] == [head]


def test_actor_killed_mid_stream_delivers_every_key_exactly_once(ray_cluster, clean_shards, tmp_path):
    d, all_keys = clean_shards
    # the pipeline's test hook: the first featurize actor to reach its 3rd batch exits (os._exit)
    flag = os.path.join(os.environ["SPECSTREAM_TEST_FAULT_DIR"], "featurize-exit")
    with open(flag, "w", encoding="utf-8") as f:
        f.write("actor 3")
    cfg = layout(d, log_params=True)
    pipe = build_pipeline(cfg)
    keys, params = [], {}
    for b in torch_batches(pipe.dataset, batch_size=8, device="cpu", ledger=pipe.ledger):
        keys.extend(b["key"])
        params.update(zip(b["key"], b["aug_params"]))
    assert not os.path.exists(flag)  # the crash happened
    assert sorted(keys) == sorted(all_keys)  # nothing lost, nothing twice
    assert pipe.report()["totals"]["balanced"]
    # the retried batch drew the same parameters as any other run with this seed
    again = {}
    for b in torch_batches(build_pipeline(layout(d, log_params=True)).dataset, batch_size=8, device="cpu"):
        again.update(zip(b["key"], b["aug_params"]))
    assert again == params


@pytest.fixture(scope="module")
def eight_shards(tmp_path_factory):
    """8 shards x 3 short clips: 8! orders, so two independent seeded shuffles coincide by
    chance with probability 1/40320."""
    return write_shard_set(tmp_path_factory.mktemp("eight"), 8, 3,
                           lambda s, i: good_sample(f"e{s}_{i}", (s + i) % 10, seconds=0.3))


def test_per_epoch_shard_permutation(ray_session, eight_shards):
    """The orders the read tasks report (the ledger's record of which shard each slot read)
    are permutations of the shards, a function of (seed, epoch): the same for the same seed
    and epoch in another pipeline, another for another epoch or another seed."""
    d, all_keys = eight_shards
    urls = sorted(os.path.join(d, f) for f in os.listdir(d))

    def orders(seed, epoch, passes):
        cfg = {"source": {"shards": d, "shuffle_shards": True}, "labels": {"vocab": VOCAB}, "seed": seed,
               "epoch": epoch}
        pipe = build_pipeline(cfg)
        for _ in range(passes):
            keys = [k for b in torch_batches(pipe.dataset, batch_size=32, device="cpu", ledger=pipe.ledger)
                    for k in b["key"]]
            assert sorted(keys) == sorted(all_keys)  # each pass: every sample once
        report = pipe.report()
        assert report["totals"]["balanced"]
        assert sorted(report["shard_order"]) == [str(p) for p in range(passes)]
        got = [report["shard_order"][str(p)] for p in range(passes)]
        assert all(sorted(o) == urls for o in got)  # every shard exactly once per epoch
        return got

    a3, a4 = orders(seed=11, epoch=3, passes=2)
    assert a3 != a4  # each epoch its own order
    assert urls not in (a3, a4)  # shuffled, not the listing order
    (b4,) = orders(seed=11, epoch=4, passes=1)
    assert b4 == a4  # the same seed and epoch: the same order (epoch 4 = base 4, or base 3 + pass 1)
    (c3,) = orders(seed=12, epoch=3, passes=1)
    assert c3 != a3  # another seed: another order
