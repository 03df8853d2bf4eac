"""Shards on a real S3 server (moto's ThreadedMotoServer on 127.0.0.1): glob, stream, pipeline."""
import os

import pytest

from conftest import s3_client

from specstream.io.samples import read_shard
from specstream.io.shards import Storage, expand_shards
from specstream.pipeline import build_pipeline, torch_batches


@pytest.fixture(scope="module")
def s3_shards(clean_shards, moto_endpoint):
    endpoint = moto_endpoint
    client = s3_client(endpoint)
    client.create_bucket(Bucket="audio")
    d, keys = clean_shards
    for name in sorted(os.listdir(d)):
        client.upload_file(os.path.join(d, name), "audio", f"train/{name}")
    client.put_object(Bucket="audio", Key="train/README.md", Body=b"not a shard")
    return endpoint, d, keys


def test_glob_and_stream_match_local(s3_shards):
    endpoint, d, keys = s3_shards
    storage = Storage(endpoint_url=endpoint, region="us-east-1")
    urls = expand_shards("s3://audio/train/shard-*.tar", storage)
    assert urls == [f"s3://audio/train/shard-{i:06d}.tar" for i in range(4)]
    assert expand_shards("s3://audio/train/", storage) == urls  # a prefix lists its .tar objects
    assert expand_shards("s3://audio/train/shard-{000001..000002}.tar", storage) == urls[1:3]
    with pytest.raises(FileNotFoundError):
        expand_shards("s3://audio/nothing-*.tar", storage)
    for url in urls:
        remote = [t.to_pylist() for t, _, _ in read_shard(url, storage) if t is not None]
        local = [t.to_pylist() for t, _, _ in read_shard(os.path.join(d, url.rsplit("/", 1)[1])) if t is not None]
        strip = lambda blocks: [{k: v for k, v in r.items() if k != "shard"} for b in blocks for r in b]
        assert strip(remote) == strip(local) and len(strip(local)) == 25


def test_pipeline_from_s3(ray_session, s3_shards):
    endpoint, _, keys = s3_shards
    pipe = build_pipeline({"source": {"shards": "s3://audio/train/shard-*.tar", "endpoint_url": endpoint,
                                      "region": "us-east-1"},
                           "labels": {"num_classes": 10}})
    got = [k for b in torch_batches(pipe.dataset, batch_size=32, device="cpu", ledger=pipe.ledger) for k in b["key"]]
    assert sorted(got) == sorted(keys)
    assert pipe.report()["totals"]["balanced"]


def test_noise_bank_from_object_storage(s3_shards):
    """A bank as an s3:// prefix: loose audio files and tar shards, listed recursively."""
    import boto3
    import numpy as np

    from conftest import ALSA, need_recordings
    from specstream.augment import BankError
    from specstream.io.banks import bank_items, check_bank, load_bank

    need_recordings(ALSA)
    endpoint, d, keys = s3_shards
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.upload_file(os.path.join(ALSA, "Noise.wav"), "audio", "banks/noise/alsa/Noise.wav")
    client.upload_file(os.path.join(d, "shard-000000.tar"), "audio", "banks/noise/shards/noise-000000.tar")
    client.put_object(Bucket="audio", Key="banks/noise/LICENSE", Body=b"text")
    storage = Storage(endpoint_url=endpoint, region="us-east-1")
    items = bank_items("s3://audio/banks/noise/", storage)
    assert items == ["s3://audio/banks/noise/alsa/Noise.wav", "s3://audio/banks/noise/shards/noise-000000.tar"]
    assert check_bank("s3://audio/banks/noise/", storage) == (2, items[0])
    bank = load_bank("s3://audio/banks/noise/", 16000, storage)
    assert len(bank) == 1 + 25  # the file and every clip of the shard
    local = load_bank(os.path.join(ALSA, "Noise.wav"), 16000)
    np.testing.assert_array_equal(bank.data[: int(local.lengths[0])].numpy(), local.data.numpy())
    with pytest.raises(BankError, match="no audio files"):
        bank_items("s3://audio/banks/none/", storage)


@pytest.fixture(scope="module")
def big_shard(s3_shards, tmp_path_factory):
    """One ~2.3 MB shard (40 two-second noise clips, FLAC compresses them little) on the S3
    server, so that a 1 MiB read buffer reads it in several ranged GETs."""
    import boto3
    import numpy as np

    from conftest import flac_bytes, write_shard

    endpoint, _, _ = s3_shards
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("big")
    samples = [{"__key__": f"big{i:03d}", "flac": flac_bytes((0.3 * rng.standard_normal(32000)).astype(np.float32)),
                "cls": str(i % 10).encode()} for i in range(40)]
    path = str(d / "big-000000.tar")
    write_shard(path, samples)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").upload_file(path, "audio", "big/big-000000.tar")
    assert os.path.getsize(path) > 2 << 20
    return path, [s["__key__"] for s in samples]


def _proxy(endpoint, **kw):
    from faultproxy import FaultProxy

    return FaultProxy(int(endpoint.rsplit(":", 1)[1]), b"/audio/big/big-000000.tar", **kw)


def test_transient_error_mid_shard_resumes_at_the_same_byte(s3_shards, big_shard):
    """The 2nd ranged GET of the shard is cut mid-body 4 times in a row (more than the S3
    client's own 3 attempts): the stream resumes where it was, with a ranged GET from that
    byte (not from byte 0: re-reading the start and discarding it would also give the right
    rows); rows equal the local read."""
    endpoint, _, _ = s3_shards
    path, keys = big_shard
    proxy = _proxy(endpoint, faults=4, skip=1)
    try:
        storage = Storage(endpoint_url=proxy.endpoint, region="us-east-1", buffer_size=1 << 20)
        chunks = list(read_shard("s3://audio/big/big-000000.tar", storage))
    finally:
        proxy.stop()
    remote = [r for t, _, _ in chunks if t is not None for r in t.to_pylist()]
    local = [r for t, _, _ in read_shard(path) if t is not None for r in t.to_pylist()]
    assert [r["key"] for r in remote] == keys
    assert [r["audio"] for r in remote] == [r["audio"] for r in local]
    assert not [e for _, bad, _ in chunks for e in bad]
    assert chunks[-1][2].resumes >= 1
    assert_resumed_in_place(proxy.requests)


def test_resume_requests_the_range_from_the_stream_position(s3_shards, big_shard):
    """Read the shard's byte stream in 100 kB reads (so the stream is only ever at a multiple
    of 100 000 between reads, and the 1 MiB buffer's own GETs are not): each GET that
    resumes after a cut asks for ``Range: bytes=N-...`` with N the position where the stream
    was, N > 0; the bytes equal the file's."""
    from specstream.io.shards import open_shard

    endpoint, _, _ = s3_shards
    path, _ = big_shard
    step = 100_000
    proxy = _proxy(endpoint, faults=4, skip=1)
    try:
        storage = Storage(endpoint_url=proxy.endpoint, region="us-east-1", buffer_size=1 << 20)
        parts = []
        with open_shard("s3://audio/big/big-000000.tar", storage) as stream:
            while True:
                data = stream.read(step)
                parts.append(data)
                if not data:
                    break
    finally:
        proxy.stop()
    with open(path, "rb") as f:
        assert b"".join(parts) == f.read()
    assert all(len(p) == step for p in parts[:-2])  # every read but the last ones is full
    resumed = assert_resumed_in_place(proxy.requests)
    assert resumed, "no GET resumed after a cut (did the S3 client retry the cut range 4 times?)"
    assert all(r["range"][0] % step == 0 for r in resumed), [r["range"] for r in resumed]


def assert_resumed_in_place(requests):
    """Each GET of the shard after a cut one asks for a Range from a byte N with 0 < N <= the
    offset where the proxy cut (nothing skipped, never again from byte 0): either the S3
    client's own retry of the same range, or the stream resuming at its position. Returns
    the resuming GETs (those after a cut with another range than the cut one)."""
    cuts = [i for i, r in enumerate(requests) if r["cut"]]
    assert cuts, "the proxy cut no response: the test tested nothing"
    assert requests[0]["range"] is None or requests[0]["range"][0] == 0  # the first GET reads from 0
    resumed = []
    for i in cuts:
        cut = requests[i]
        assert cut["range"] is not None and cut["cut_at"] is not None and cut["cut_at"] > cut["range"][0], cut
        assert i + 1 < len(requests), f"nothing read after the cut at {cut['cut_at']}"
        nxt = requests[i + 1]
        assert nxt["range"] is not None, f"a GET without Range after the cut at byte {cut['cut_at']}: {nxt['line']}"
        assert 0 < nxt["range"][0] <= cut["cut_at"], (cut["range"], cut["cut_at"], nxt["range"])
        if nxt["range"] != cut["range"]:
            resumed.append(nxt)
    assert all(r["range"] and r["range"][0] > 0 for r in requests[1:]), [r["range"] for r in requests]
    return resumed


def test_persistent_error_quarantines_the_unread_rest(s3_shards, big_shard):
    endpoint, _, _ = s3_shards
    path, keys = big_shard
    proxy = _proxy(endpoint, faults=10_000, skip=1)
    try:
        storage = Storage(endpoint_url=proxy.endpoint, region="us-east-1", buffer_size=1 << 20,
                          read_retries=2, retry_backoff=0.01)
        chunks = list(read_shard("s3://audio/big/big-000000.tar", storage))
    finally:
        proxy.stop()
    rows = [r["key"] for t, _, _ in chunks if t is not None for r in t.to_pylist()]
    bad = [e for _, b, _ in chunks for e in b]
    assert rows == keys[: len(rows)] and 0 < len(rows) < len(keys)  # what was read is kept
    assert bad[-1]["key"].startswith("<unread:") and "the rest of the shard was not read" in bad[-1]["reason"]
    stats = chunks[-1][2]
    # the unread rest is listed, but it is not a sample (how many it held is unknown)
    samples_bad = [e for e in bad if not e.get("unread")]
    assert [e for e in bad if e.get("unread")] == [bad[-1]]
    assert stats.samples == stats.rows + stats.quarantined == len(rows) + len(samples_bad)
    assert stats.unread is not None and 0 < stats.unread["from_byte"] < os.path.getsize(path)


def test_pipeline_survives_a_transient_error_mid_shard(ray_session, s3_shards, big_shard):
    endpoint, _, keys = s3_shards
    _, big_keys = big_shard
    proxy = _proxy(endpoint, faults=4, skip=1)
    try:
        pipe = build_pipeline({"source": {"shards": ["s3://audio/train/shard-*.tar", "s3://audio/big/big-000000.tar"],
                                          "endpoint_url": proxy.endpoint, "region": "us-east-1", "buffer_mb": 1,
                                          "block_rows": 8},
                               "labels": {"num_classes": 10}})
        got = [k for b in torch_batches(pipe.dataset, batch_size=16, device="cpu", ledger=pipe.ledger)
               for k in b["key"]]
    finally:
        proxy.stop()
    assert sorted(got) == sorted(keys + big_keys)  # nothing lost, nothing twice
    assert_resumed_in_place(proxy.requests)
    report = pipe.report()
    assert report["totals"]["balanced"] and report["totals"]["quarantined"] == 0
    assert report["shards"]["s3://audio/big/big-000000.tar"]["resumes"] >= 1


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
def test_compressed_shard_over_s3_resumes_in_the_compressed_bytes(s3_shards, big_shard, tmp_path, fmt):
    """A .tar.gz / .tar.zst on S3 is read as stored (pyarrow must not decompress it by its
    name): the compression is detected from its bytes, a GET cut mid-body resumes at the
    compressed byte where the stream was, and the rows equal the plain local read."""
    import boto3
    import gzip

    import zstandard

    from faultproxy import FaultProxy

    endpoint, _, _ = s3_shards
    path, keys = big_shard
    raw = open(path, "rb").read()
    packed = gzip.compress(raw) if fmt == "gzip" else zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    name = "big-000000.tar.gz" if fmt == "gzip" else "big-000000.tar.zst"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(
        Bucket="audio", Key=f"packed/{name}", Body=packed)
    assert len(packed) > 2 << 20  # noise FLAC barely compresses: several ranged GETs
    proxy = FaultProxy(int(endpoint.rsplit(":", 1)[1]), f"/audio/packed/{name}".encode(), faults=4, skip=1)
    try:
        storage = Storage(endpoint_url=proxy.endpoint, region="us-east-1", buffer_size=1 << 20)
        chunks = list(read_shard(f"s3://audio/packed/{name}", storage))
    finally:
        proxy.stop()
    assert_resumed_in_place(proxy.requests)
    stats = chunks[-1][2]
    assert stats.compression == fmt and stats.unread is None and stats.corrupt is None and stats.resumes >= 1
    assert stats.bytes_read == len(packed)
    remote = [r for t, _, _ in chunks if t is not None for r in t.to_pylist()]
    local = [r for t, _, _ in read_shard(path) if t is not None for r in t.to_pylist()]
    assert [r["key"] for r in remote] == keys and [r["audio"] for r in remote] == [r["audio"] for r in local]
