import io
import json
import os

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


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole suite."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def clean_shards(tmp_path_factory):
    """4 shards x 25 one-second 16 kHz FLAC clips, labels 0..9; returns (dir, keys)."""
    d = tmp_path_factory.mktemp("clean")
    keys = []
    for s in range(4):
        samples = []
        for i in range(25):
            key = f"s{s}_{i:03d}"
            samples.append(good_sample(key, (s * 25 + i) % 10))
            keys.append(key)
        write_shard(os.path.join(d, f"shard-{s:06d}.tar"), samples)
    return str(d), keys
