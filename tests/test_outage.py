"""Object-store outages, throttling and refused credentials, on real S3 servers.

SeaweedFS (``weed mini``) is killed with SIGKILL mid-epoch and restarted on the same ports
and data: within the retry budget every key arrives exactly once and the report balances;
past it the unread rest of each shard is reported as unread (unknown count), the run goes
on, and the report does not balance. A proxy in front of moto answers 503 SlowDown more
often than the S3 client retries; a wrong secret is a clear error that names bucket and key
and never shows the secret.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from conftest import good_sample, s3_client, write_shard_set
from specstream.io.samples import ReaderOptions, read_shard
from specstream.io.shards import Storage, StorageAccessError, expand_shards
from specstream.pipeline import build_pipeline, torch_batches

SHARDS, PER_SHARD = 12, 40


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    from servers import SeaweedFS

    server = SeaweedFS(tmp_path_factory.mktemp("weed-outage")).start()
    d, keys = write_shard_set(tmp_path_factory.mktemp("outage-shards"), SHARDS, PER_SHARD,
                              lambda s, i: good_sample(f"o{s:02d}_{i:03d}", (s + i) % 10, seconds=0.5))
    client = s3_client(server.endpoint)
    client.create_bucket(Bucket="audio")
    for name in sorted(os.listdir(d)):
        client.upload_file(os.path.join(d, name), "audio", f"outage/{name}")
    yield server, keys
    server.stop()


def _config(endpoint, **source):
    return {"source": {"shards": "s3://audio/outage/shard-*.tar", "endpoint_url": endpoint, "region": "us-east-1",
                       "block_rows": 8, "buffer_mb": 1, **source},
            "labels": {"num_classes": 10}, "deliver": {"batch_size": 16, "prefetch_batches": 1}}


class _Outage(threading.Thread):
    """Kills the server, waits ``down`` seconds (or until ``until`` is set), restarts it;
    re-raises its own exception in ``check()``."""

    def __init__(self, server, down=None, until=None):
        super().__init__(daemon=True)
        self.server, self.down, self.until = server, down, until
        self.error = None
        self.killed = threading.Event()

    def run(self):
        try:
            self.server.kill()
            self.killed.set()
            if self.until is not None:
                self.until.wait(300)
            else:
                time.sleep(self.down)
            self.server.restart()
        except BaseException as e:  # noqa: BLE001 - re-raised in check()
            self.error = e

    def check(self):
        self.join(180)
        assert not self.is_alive(), "the restart did not finish"
        if self.error is not None:
            raise self.error


def _consume_with_outage(pipe, make_outage, started):
    """Stream the pipeline to its end; after the first batch start ``make_outage()`` (appended
    to ``started`` at once, so the caller can always restart the server) and wait until the
    store is down. Returns the delivered keys."""
    got = []
    for b in torch_batches(pipe.dataset, batch_size=16, device="cpu", ledger=pipe.ledger, prefetch_batches=1):
        got.extend(b["key"])
        if not started:
            started.append(make_outage())
            started[0].start()
            started[0].killed.wait(30)
    return got


@pytest.mark.slow
@pytest.mark.parametrize("down_s", [2, 20])
def test_store_killed_mid_epoch_and_restarted_loses_nothing(ray_session, weed, down_s):
    """SIGKILL after the first batch, restart after ``down_s`` seconds (default 60 s budget):
    every key exactly once, no exception reaches Ray, the report balances and counts the
    retries."""
    server, keys = weed
    pipe = build_pipeline(_config(server.endpoint))
    started = []
    got = _consume_with_outage(pipe, lambda: _Outage(server, down=down_s), started)
    started[0].check()
    assert Counter(got) == Counter(keys)  # each key exactly once
    report = pipe.report()
    t = report["totals"]
    assert t["balanced"] and t["read"] == t["delivered"] == len(keys) and t["quarantined"] == 0
    assert t["shards_unread"] == 0 and t["bytes_unread"] == 0
    assert all(s["bytes_read"] and s["bytes_total"] for s in report["shards"].values())
    assert t.get("resumes", 0) >= 1  # some open or read met the outage and was retried


@pytest.mark.slow
def test_outage_past_the_retry_budget_reports_unread_shards_and_goes_on(ray_session, weed):
    """Budget 1 s, the store down until the stream has ended: every shard that met the
    outage is reported unread from the byte where it stopped (its sample count unknown),
    what was read before is delivered once, the run ends normally, and the report is not
    balanced."""
    server, keys = weed
    ended = threading.Event()
    started = []
    pipe = build_pipeline(_config(server.endpoint, retry_budget_s=1.0, retry_backoff=0.1))
    try:
        got = _consume_with_outage(pipe, lambda: _Outage(server, until=ended), started)
        report = pipe.report()
    finally:
        ended.set()
        for outage in started:
            outage.check()
    assert len(got) == len(set(got)) and set(got) < set(keys)
    t = report["totals"]
    assert not t["balanced"] and t["shards_unread"] >= 1 and t["bytes_unread"] > 0
    for name, s in report["shards"].items():
        assert s["read"] == s["delivered"] + s["quarantined"]  # what was read is accounted for
        if s["unread"] is not None:
            assert not s["balanced"] and s["bytes_read"] == s["unread"]["from_byte"]
            assert "retry budget" in s["unread"]["reason"]
            assert s["unread"]["from_byte"] < s["bytes_total"]
    unread_entries = [q for q in report["quarantine"] if q.get("unread")]
    assert len(unread_entries) == t["shards_unread"]


def test_specstream_run_exits_1_and_says_what_was_not_read(ray_session, tmp_path, capsys):
    """A truncated .tar.gz among good shards: the run goes to the end, the good samples and
    those before the damage are delivered, and ``specstream run`` prints NOT READ, writes
    the report and exits 1 (an unbalanced report)."""
    import gzip

    from specstream.cli import main

    (tmp_path / "s").mkdir()
    d, keys = write_shard_set(tmp_path / "s", 3, 20, lambda s, i: good_sample(f"r{s}_{i:02d}", i % 10))
    packed = gzip.compress(open(os.path.join(d, "shard-000001.tar"), "rb").read())
    os.remove(os.path.join(d, "shard-000001.tar"))
    with open(os.path.join(d, "shard-000001.tar.gz"), "wb") as f:
        f.write(packed[: len(packed) // 2])
    config = _write_config(tmp_path)
    code = main(["run", "--quiet", "--report", str(tmp_path / "r.json"), "--set", f"source.shards={d}",
                 "--set", "source.endpoint_url=null", config])
    out = capsys.readouterr().out
    assert code == 1 and "NOT BALANCED" in out and "NOT READ: 1 shard(s)" in out and "truncated" in out
    report = json.loads((tmp_path / "r.json").read_text())
    bad = report["shards"][os.path.join(d, "shard-000001.tar.gz")]
    assert bad["compression"] == "gzip" and bad["unread"]["from_byte"] > 0 and not bad["balanced"]
    assert 0 < bad["delivered"] < 20 and bad["read"] == bad["delivered"] + bad["quarantined"]
    assert report["totals"]["delivered"] == 40 + bad["delivered"] and report["totals"]["shards_unread"] == 1


def _write_config(tmp_path):
    import yaml

    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(_config("http://unused")))
    return str(path)


class SlowDownProxy:
    """HTTP proxy on 127.0.0.1 in front of an S3 server: the first ``faults`` GET requests
    whose request line contains ``match`` get ``503 SlowDown`` (S3's throttling answer);
    every other request is forwarded untouched."""

    BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")

    def __init__(self, upstream_port: int, match: bytes, faults: int):
        self.upstream_port, self.match, self.faults = upstream_port, match, faults
        self.throttled = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    client.close()
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0]
            with self.lock:
                throttle = line.startswith(b"GET ") and self.match in line and self.faults > 0
                if throttle:
                    self.faults -= 1
                    self.throttled += 1
            if throttle:
                client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                               + f"Content-Length: {len(self.BODY)}\r\n\r\n".encode() + self.BODY)
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            upstream.sendall(head)
        except OSError:
            client.close()
            return
        # pass the rest of this connection through (later requests on it are not inspected)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def stop(self):
        self.sock.close()


def _pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture(scope="module")
def moto_shard(moto_endpoint, tmp_path_factory):
    d, keys = write_shard_set(tmp_path_factory.mktemp("slowdown"), 1, 30,
                              lambda s, i: good_sample(f"t{i:03d}", i % 10))
    client = s3_client(moto_endpoint)
    client.create_bucket(Bucket="throttled")
    client.upload_file(os.path.join(d, "shard-000000.tar"), "throttled", "x/shard-000000.tar")
    return moto_endpoint, os.path.join(d, "shard-000000.tar"), keys


def test_throttling_503_slowdown_is_retried_with_backoff(moto_shard):
    """Eight 503 SlowDown answers in a row on the shard (more than the S3 client's own
    retries): the open is retried with backoff and the shard reads whole, byte-identical."""
    endpoint, local, keys = moto_shard
    proxy = SlowDownProxy(int(endpoint.rsplit(":", 1)[1]), b"/throttled/x/shard-000000.tar", faults=8)
    try:
        storage = Storage(endpoint_url=proxy.endpoint, region="us-east-1", retry_backoff=0.05, retry_backoff_max=0.2)
        chunks = list(read_shard("s3://throttled/x/shard-000000.tar", storage))
    finally:
        proxy.stop()
    assert proxy.throttled == 8 and proxy.faults == 0  # every 503 was answered and then retried past
    rows = [r for t, _, _ in chunks if t is not None for r in t.to_pylist()]
    ref = [r for t, _, _ in read_shard(local) if t is not None for r in t.to_pylist()]
    assert [(r["key"], r["audio"]) for r in rows] == [(r["key"], r["audio"]) for r in ref] and len(rows) == len(keys)
    stats = chunks[-1][2]
    assert stats.unread is None and stats.resumes >= 1


SECRET = "wr0ng-S3cret-d0-not-print-7f3a9c"


def test_wrong_credentials_are_a_clear_error_without_the_secret(weed, tmp_path, monkeypatch):
    """SeaweedFS checks signatures: a wrong secret is 403. Listing (driver) and reading (read
    task) both raise StorageAccessError naming bucket and key; the CLI prints one line and
    exits 2; the secret appears in no message, log line or output."""
    server, _ = weed
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    storage = Storage(endpoint_url=server.endpoint, region="us-east-1")
    with pytest.raises(StorageAccessError) as listing:
        expand_shards("s3://audio/outage/shard-*.tar", storage)
    with pytest.raises(StorageAccessError) as reading:
        list(read_shard("s3://audio/outage/shard-000003.tar", storage, ReaderOptions()))
    for e, key in ((listing.value, "outage/shard-*.tar"), (reading.value, "outage/shard-000003.tar")):
        msg = str(e)
        assert "access denied to bucket 'audio'" in msg and repr(key) in msg and SECRET not in msg
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "specstream.cli", "run", "--quiet", "--set",
                           f"source.endpoint_url={server.endpoint}", _write_config(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "access denied to bucket 'audio'" in proc.stderr and "Traceback" not in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    for d, _, files in os.walk(server.root):  # nor in the server's own logs, to be thorough
        for f in files:
            if f.endswith(".log"):
                assert SECRET not in open(os.path.join(d, f), errors="replace").read()


def test_crashed_read_task_is_retried_without_double_counting(ray_session, clean_shards):
    """The read task of one shard kills its own process (os._exit) after emitting its
    second chunk: Ray retries the task; every key is delivered exactly once and the ledger
    counts each chunk once (read = delivered, balanced)."""
    d, keys = clean_shards
    fault = os.path.join(os.environ["SPECSTREAM_TEST_FAULT_DIR"], "read-exit")
    with open(fault, "w", encoding="utf-8") as f:
        f.write("shard-000002.tar 2")  # blocks of 8 rows: the crash comes after 16 of its 25 samples
    pipe = build_pipeline({"source": {"shards": d, "block_rows": 8}, "labels": {"num_classes": 10}})
    got = [k for b in torch_batches(pipe.dataset, batch_size=16, device="cpu", ledger=pipe.ledger)
           for k in b["key"]]
    assert not os.path.exists(fault)  # the crash happened
    assert Counter(got) == Counter(keys)
    t = pipe.report()["totals"]
    assert t["balanced"] and t["read"] == t["delivered"] == len(keys)


def test_an_object_gone_after_listing_costs_a_short_budget(moto_shard):
    """A 404 (object deleted after the listing) is retried for a few seconds, not the whole
    retry budget, and reported unread with a reason that says so."""
    endpoint, _, _ = moto_shard
    storage = Storage(endpoint_url=endpoint, region="us-east-1", retry_budget_s=60.0, retry_backoff=0.05)
    t0 = time.monotonic()
    chunks = list(read_shard("s3://throttled/x/gone-000000.tar", storage))
    assert time.monotonic() - t0 < 30
    stats = chunks[-1][2]
    assert stats.unread is not None and "not found" in stats.unread["reason"] and stats.unread["from_byte"] == 0
