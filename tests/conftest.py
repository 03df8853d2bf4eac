import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

# Test-only credentials for the local S3 servers the tests start (set before Ray starts, so
# its workers inherit them: specstream reads credentials only from the standard variables).
for _k, _v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ.setdefault(_k, _v)


def flac_bytes(x: np.ndarray, sr: int = 16000, fmt: str = "FLAC") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def tone(seconds: float = 1.0, sr: int = 16000, freq: float = 440.0, amp: float = 0.3,
         channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def write_shard(path: str, samples) -> None:
    """Write a tar with webdataset's TarWriter; samples are dicts with __key__."""
    import webdataset as wds

    with wds.TarWriter(path) as w:
        for s in samples:
            w.write(s)


def good_sample(key: str, label: int, sr: int = 16000, seconds: float = 1.0) -> dict:
    x = tone(seconds, sr, freq=200 + 50 * label)
    return {"__key__": key, "flac": flac_bytes(x, sr), "cls": str(label).encode(),
            "json": json.dumps({"label": label}).encode()}


@pytest.fixture(scope="session", autouse=True)
def _kernels_compiled_once():
    """The numba kernels compiled (or loaded from numba's cache) once, before any Ray
    worker or subprocess starts: those then load them from the cache instead of each
    compiling them (tens of seconds in a fresh checkout, on shared cores)."""
    from specstream.functional import cpu_kernels

    cpu_kernels.warm_up()


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray cluster for the whole suite, with two nodes (ray.cluster_utils.Cluster, both
    on this machine): a CPU head (custom resource ``cpu_node``) and a second node with one
    logical GPU (``gpu_node``), so placement across nodes is exercised by every test."""
    import ray
    from ray.cluster_utils import Cluster

    import tempfile

    # SPECSTREAM_TEST_FAULT_DIR: the pipeline's test hook for crashing a read task (readtask._test_fault)
    env = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "SPECSTREAM_TEST_FAULT_DIR": tempfile.mkdtemp(prefix="specstream-faults-")}
    os.environ.update(env)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"cpu_node": 100}, "object_store_memory": 512 << 20,
        "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=1, resources={"gpu_node": 100}, object_store_memory=512 << 20)
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": env})
    cluster.wait_for_nodes()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(autouse=True)
def _release_ledgers(monkeypatch):
    """A test's pipelines' ledger actors end with the test. Each is a worker process with
    torch loaded, and Ray Data's bookkeeping keeps finished datasets (and so the actors'
    handles) alive well past their test: a suite's worth of them brings the machine to Ray's
    memory-monitor threshold, which then kills workers of the test running. Where Ray is not
    installed (the GPU box runs the CUDA parity tests without it) there is nothing to release."""
    try:
        from specstream.pipeline import build as pipeline  # where build_pipeline creates the ledger actor
    except ModuleNotFoundError as e:
        if e.name != "ray":
            raise
        yield
        return

    made = []
    real = pipeline.Ledger

    class Recording:
        @staticmethod
        def remote(*args, **kwargs):
            handle = real.remote(*args, **kwargs)
            made.append(handle)
            return handle

    monkeypatch.setattr(pipeline, "Ledger", Recording)
    yield
    if made:
        import ray

        for handle in made:
            ray.kill(handle)


@pytest.fixture(scope="session")
def ray_session(ray_cluster):
    import ray

    return ray


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3 server for the suite: moto on 127.0.0.1, on a port the kernel picks
    (tests/servers.py: no window between choosing the port and binding it)."""
    from servers import MotoS3

    with MotoS3() as server:
        yield server.endpoint


def fields(d: dict, expected: dict) -> dict:
    """The items of ``d`` named by ``expected``'s keys (missing ones as "<missing>"), for an
    exact comparison that does not break when a report gains fields:
    ``assert fields(report["totals"], want) == want``."""
    return {k: d.get(k, "<missing>") for k in expected}


def run_in_threads(fns, timeout: float):
    """Run each no-argument callable in its own (daemon) thread and return their results in
    order. Fails the test if a thread is still running after ``timeout`` seconds (a hang)
    and re-raises the first exception a thread raised (a bare join would lose both)."""
    import threading

    results, errors = [None] * len(fns), [None] * len(fns)

    def call(i):
        try:
            results[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread below
            errors[i] = e

    threads = [threading.Thread(target=call, args=(i,), daemon=True, name=f"test-worker-{i}")
               for i in range(len(fns))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        pytest.fail(f"threads still running after {timeout} s: {alive}")
    for e in errors:
        if e is not None:
            raise e
    return results


def s3_client(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def write_shard_set(d, shards: int, per_shard: int, make):
    """``shards`` tars shard-NNNNNN.tar in d, sample i of shard s = make(s, i) (a dict with
    __key__); returns (str(d), keys in order)."""
    keys = []
    for s in range(shards):
        samples = [make(s, i) for i in range(per_shard)]
        keys.extend(x["__key__"] for x in samples)
        write_shard(os.path.join(d, f"shard-{s:06d}.tar"), samples)
    return str(d), keys


@pytest.fixture(scope="session")
def clean_shards(tmp_path_factory):
    """4 shards x 25 one-second 16 kHz FLAC clips, labels 0..9; returns (dir, keys)."""
    return write_shard_set(tmp_path_factory.mktemp("clean"), 4, 25,
                           lambda s, i: good_sample(f"s{s}_{i:03d}", (s * 25 + i) % 10))


# Real recordings from Debian packages, installed by .ci/run (never committed):
# asterisk-core-sounds-en-wav (human speech prompts, 8 kHz), alsa-utils (/usr/share/sounds/alsa,
# 48 kHz speech and noise), pocketsphinx-testdata (16 kHz read speech).
ASTERISK = "/usr/share/asterisk/sounds/en_US_f_Allison"
ALSA = "/usr/share/sounds/alsa"
POCKETSPHINX = "/usr/share/pocketsphinx/test/data"
_PACKAGES = {ASTERISK: "asterisk-core-sounds-en-wav", ALSA: "alsa-utils", POCKETSPHINX: "pocketsphinx-testdata"}


def need_recordings(*dirs: str) -> None:
    """Fail (in CI) or skip (elsewhere) when the Debian packages with real audio are absent."""
    missing = [_PACKAGES[d] for d in dirs if not os.path.isdir(d)]
    if missing:
        msg = f"real recordings missing: apt-get install {' '.join(missing)} (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def load_wav(path: str, sr: int = 16000) -> np.ndarray:
    """A recording as mono float32 at ``sr`` (torchaudio's resampler)."""
    import torch
    import torchaudio

    x, s = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(1)
    if s != sr:
        x = torchaudio.functional.resample(torch.from_numpy(x), s, sr).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


@pytest.fixture(scope="session")
def speech():
    """Ten real speech prompts (asterisk, one speaker, 8 kHz resampled to 16 kHz) of different
    lengths, as (padded [B, N] float32, lengths [B])."""
    need_recordings(ASTERISK)
    names = ["activated", "added", "auth-thankyou", "agent-pass", "call-waiting", "calling", "cancelled",
             "conf-full", "conf-getpin", "conf-locked"]
    clips = [load_wav(os.path.join(ASTERISK, n + ".wav")) for n in names]
    clips = [c for c in clips if len(c)]
    N = max(len(c) for c in clips)
    wave = np.zeros((len(clips), N), np.float32)
    for i, c in enumerate(clips):
        wave[i, : len(c)] = c
    return wave, np.array([len(c) for c in clips], dtype=np.int64)


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def need_engines():
    missing = [e for e in ("espeak-ng", "flite") if shutil.which(e) is None]
    if missing:
        msg = f"speech synthesisers missing: apt-get install {' '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def need_module(name: str, hint: str) -> None:
    """Skip without the module here; fail under CI, whose set-up installs it."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        msg = f"{name} not installed: {hint}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def run_script(args, timeout=300):
    """Run a repository script (``[path, *args]``) with this Python in its own Ray instance;
    fails the test on a non-zero exit or a hang. Returns its stdout."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_DATA_DISABLE_PROGRESS_BARS="1",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("RAY_ADDRESS", None)  # the script starts its own local Ray, not the test session's
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGINT first: the script's Ray shuts down (ray.init's atexit) instead of being orphaned
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"{args[0]} still running after {timeout} s (a hang)\n--- stdout\n{stdout[-3000:]}\n"
                    f"--- stderr\n{stderr[-5000:]}")
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-5000:]}"
    return stdout
