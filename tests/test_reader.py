"""Shard -> samples + quarantine (no Ray): grouping, whitelist, damage, shard expansion."""
import io
import json
import os
import pickle

import numpy as np
import pytest

from conftest import good_sample, tone, write_shard
from specstream.io.samples import ReaderOptions, ShardStats, iter_samples, read_shard
from specstream.io.shards import expand_shards


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def _collect(path, **opts):
    rows, bad = [], []
    stats = None
    for table, q, stats in read_shard(path, options=ReaderOptions(**opts)):
        if table is not None:
            rows.extend(table.to_pylist())
        bad.extend(q)
    return rows, bad, stats


def test_rows_hold_whitelisted_fields_only_and_never_unpickle(tmp_path):
    marker = tmp_path / "pwned"
    s = good_sample("k0", 3)
    s["pyd"] = pickle.dumps(_Exploit(str(marker)))
    s["pth"] = b"not a tensor"
    s["txt"] = "hello".encode()
    path = str(tmp_path / "a.tar")
    write_shard(path, [s, good_sample("k1", 4)])
    rows, bad, stats = _collect(path)
    assert not marker.exists()
    assert bad == []
    assert [r["key"] for r in rows] == ["k0", "k1"]
    assert set(rows[0]) == {"key", "shard", "audio", "audio_format", "cls", "txt", "json", "index"}
    assert rows[0]["audio_format"] == "flac" and rows[0]["audio"] == s["flac"]
    assert rows[0]["cls"] == "3" and rows[0]["txt"] == "hello" and json.loads(rows[0]["json"]) == {"label": 3}
    assert rows[1]["txt"] is None
    assert stats.ignored_fields == {"pyd": 1, "pth": 1}
    assert stats.samples == 2 and stats.rows == 2 and stats.quarantined == 0


def test_bad_json_no_audio_bad_utf8_and_duplicate_key_are_quarantined_alone(tmp_path):
    samples = [good_sample(f"k{i}", i % 10) for i in range(8)]
    samples[1]["json"] = b'{"label": 1,'  # invalid JSON
    del samples[3]["flac"]  # no audio
    samples[5]["cls"] = b"\xff\xfe"  # not UTF-8
    samples[7]["__key__"] = "k0"  # a second sample with key k0
    samples[6]["json"] = b"[1, 2]"  # JSON, but not an object
    path = str(tmp_path / "b.tar")
    write_shard(path, samples)
    rows, bad, stats = _collect(path)
    assert [r["key"] for r in rows] == ["k0", "k2", "k4"]
    reasons = {e["key"]: e["reason"] for e in bad}
    assert set(reasons) == {"k1", "k3", "k5", "k6", "k0"} and len(bad) == 5
    assert "invalid JSON" in reasons["k1"]
    assert "no audio member" in reasons["k3"]
    assert "UTF-8" in reasons["k5"]
    assert "expected an object" in reasons["k6"]
    assert "duplicate key" in reasons["k0"]
    assert all(e["shard"] == path and e["stage"] == "read" for e in bad)
    assert stats.samples == 8 == len(rows) + len(bad)


def test_truncated_shard_keeps_every_complete_sample(tmp_path):
    samples = [good_sample(f"k{i}", i) for i in range(6)]
    path = str(tmp_path / "c.tar")
    write_shard(path, samples)
    raw = open(path, "rb").read()
    # cut in the middle of k4's audio member
    cut = raw.index(b"k4.flac") + 512 + 2000
    open(path, "wb").write(raw[:cut])
    rows, bad, stats = _collect(path)
    assert [r["key"] for r in rows] == ["k0", "k1", "k2", "k3"]
    assert [e["key"] for e in bad] == ["k4"] and "truncated" in bad[0]["reason"]
    assert stats.samples == 5  # k5 was never reached: it is not in the shard any more


def test_corrupt_region_is_one_entry_and_samples_after_it_flow(tmp_path):
    samples = [good_sample(f"k{i}", i) for i in range(6)]
    path = str(tmp_path / "d.tar")
    write_shard(path, samples)
    raw = bytearray(open(path, "rb").read())
    h = raw.index(b"k2.flac")  # header of k2's first member
    raw[h: h + 100] = b"\x00\x01" * 50
    open(path, "wb").write(bytes(raw))
    rows, bad, _ = _collect(path)
    keys = [r["key"] for r in rows]
    assert keys == ["k0", "k1", "k3", "k4", "k5"]
    # k2's audio header was lost inside k2 (members are written cls, flac, json): the
    # region is reported once, and k2, split by it, is quarantined once
    by_key = {e["key"]: e["reason"] for e in bad}
    assert len(bad) == 2
    assert by_key["k2"].startswith("sample spans a corrupt tar region")
    region = [k for k in by_key if k.startswith("<corrupt:")]
    assert len(region) == 1 and "corrupt tar header" in by_key[region[0]]


def test_oversized_member_quarantines_its_sample_only(tmp_path):
    samples = [good_sample(f"k{i}", i, seconds=1.0) for i in range(3)]
    samples[1] = good_sample("k1", 1, seconds=5.0)
    path = str(tmp_path / "e.tar")
    write_shard(path, samples)
    limit = max(len(samples[0]["flac"]), len(samples[2]["flac"])) + 10
    rows, bad, _ = _collect(path, max_member_bytes=limit)
    assert [r["key"] for r in rows] == ["k0", "k2"]
    assert [e["key"] for e in bad] == ["k1"] and "over the limit" in bad[0]["reason"]


def test_unopenable_shard_is_reported_unread_not_raised(tmp_path):
    rows, bad, stats = _collect(str(tmp_path / "missing.tar"))
    assert rows == [] and len(bad) == 1 and bad[0]["key"] == "<unread:0>" and bad[0]["unread"]
    assert "cannot open shard" in bad[0]["reason"] and "No such file" in bad[0]["reason"]
    # an unopened shard holds an unknown number of samples: it is not counted as one
    assert stats.samples == stats.quarantined == 0 and stats.unread["from_byte"] == 0


def _compressors():
    import bz2
    import gzip
    import lzma

    import zstandard

    return {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress, "bzip2": bz2.compress,
            "xz": lzma.compress}


@pytest.mark.parametrize("fmt", ["gzip", "zstd", "bzip2", "xz"])
def test_compressed_shards_stream_like_plain_ones_detected_by_magic(tmp_path, fmt):
    """.tar.gz / .tar.zst / .tar.bz2 / .tar.xz give the plain tar's rows, byte for byte, and
    the format is found from the magic bytes (a gzip shard named .tar reads too)."""
    plain = str(tmp_path / "p.tar")
    write_shard(plain, [good_sample(f"k{i:02d}", i % 10) for i in range(30)])
    data = open(plain, "rb").read()
    packed = _compressors()[fmt](data)
    named = {"gzip": "c.tar.gz", "zstd": "c.tar.zst", "bzip2": "c.tar.bz2", "xz": "c.tar.xz"}[fmt]
    for name in (named, "misnamed.tar"):
        (tmp_path / name).write_bytes(packed)
        rows, bad, stats = _collect(str(tmp_path / name))
        assert [(r["key"], r["audio"], r["json"]) for r in rows] == \
            [(r["key"], r["audio"], r["json"]) for r in _collect(plain)[0]]
        assert bad == [] and stats.compression == fmt and stats.unread is None and stats.corrupt is None
        assert stats.bytes_read == stats.bytes_total == len(packed)
    from specstream.io.shards import expand_shards

    assert str(tmp_path / named) in expand_shards(str(tmp_path))  # a folder lists compressed shards


def test_damage_inside_a_compressed_stream_keeps_what_came_before(tmp_path):
    """Truncating or flipping a byte of a .tar.gz: the samples before the damage flow
    byte-identical; the damage is one shard-level entry that says where; the shard reports
    an unread rest (unknown count) or a checksum failure, never a clean read."""
    import gzip
    import random
    import zlib

    plain = str(tmp_path / "p.tar")
    write_shard(plain, [good_sample(f"k{i:02d}", i % 10) for i in range(30)])
    ref = {r["key"]: r["audio"] for r in _collect(plain)[0]}
    packed = gzip.compress(open(plain, "rb").read())
    cut = len(packed) // 2
    (tmp_path / "t.tar.gz").write_bytes(packed[:cut])
    rows, bad, stats = _collect(str(tmp_path / "t.tar.gz"))
    assert 0 < len(rows) < 30 and all(ref[r["key"]] == r["audio"] for r in rows)
    assert [r["key"] for r in rows] == sorted(ref)[: len(rows)]
    assert stats.unread is not None and "truncated" in stats.unread["reason"]
    assert bad[-1]["key"] == f"<unread:{stats.unread['from_byte']}>" and 0 < stats.unread["from_byte"] <= cut
    assert stats.samples == stats.rows + stats.quarantined == len(rows) + len(bad) - 1
    rng = random.Random(0)
    outcomes = set()
    for _ in range(40):
        flipped = bytearray(packed)
        flipped[rng.randrange(20, len(packed) - 8)] ^= 1 << rng.randrange(8)
        (tmp_path / "f.tar.gz").write_bytes(bytes(flipped))
        rows, bad, stats = _collect(str(tmp_path / "f.tar.gz"))
        assert stats.samples == stats.rows + stats.quarantined
        try:
            harmless = gzip.decompress(bytes(flipped)) == open(plain, "rb").read()
        except (OSError, EOFError, zlib.error):
            harmless = False
        if harmless:  # e.g. a bit of an unused Huffman code length: same bytes out
            assert stats.unread is None and stats.corrupt is None and len(rows) == 30
            continue
        assert stats.unread is not None or stats.corrupt is not None  # damage is never reported clean
        outcomes.add("unread" if stats.unread else "corrupt")
        if stats.corrupt:
            assert bad[-1]["key"] == "<checksum>" and "checksum" in bad[-1]["reason"]
    assert outcomes == {"unread", "corrupt"}


def test_make_shards_compress_gz_round_trip_and_inspect(tmp_path):
    import soundfile as sf

    from specstream.io.inspect import inspect_shards
    from specstream.io.make_shards import make_shards

    src = tmp_path / "src" / "dog"
    src.mkdir(parents=True)
    for i in range(6):
        sf.write(str(src / f"a{i}.wav"), tone(0.5, 16000, 300 + 10 * i), 16000)
    summary = make_shards(str(tmp_path / "src"), str(tmp_path / "out"), compress="gz", max_count=4, progress=False)
    assert [os.path.basename(p) for p in summary.shards] == ["shard-000000.tar.gz", "shard-000001.tar.gz"]
    assert all(open(p, "rb").read(2) == b"\x1f\x8b" for p in summary.shards)
    got = inspect_shards(str(tmp_path / "out"))
    assert got["samples"] == got["readable"] == 6 and got["compression"] == {"gzip": 2}
    assert got["labels"] == {"dog": 6} and not got["problems"] and not got["unread_shards"]


def test_make_shards_stays_inside_the_source_folder(tmp_path):
    """A manifest naming ../x, an absolute path elsewhere, or a symlink leading out of the
    folder: each skipped with its reason, none read."""
    import soundfile as sf

    from specstream.io.make_shards import make_shards

    outside = tmp_path / "secret"
    outside.mkdir()
    sf.write(str(outside / "o.wav"), tone(0.2), 16000)
    src = tmp_path / "src"
    src.mkdir()
    sf.write(str(src / "in.wav"), tone(0.2), 16000)
    os.symlink(outside / "o.wav", src / "link.wav")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"path": p, "label": "x"}) for p in
                                  ["in.wav", "../secret/o.wav", str(outside / "o.wav"), "link.wav",
                                   str(src / "in.wav")]))
    summary = make_shards(str(src), str(tmp_path / "out"), manifest=str(manifest), progress=False, shuffle=False)
    assert summary.samples_written == 1  # in.wav once (its absolute spelling is the same key)
    reasons = dict(summary.skipped)
    for p in ["../secret/o.wav", str(outside / "o.wav"), "link.wav"]:
        assert reasons[p].startswith("outside the source folder")
    assert reasons[str(src / "in.wav")].startswith("duplicate key")
    # the folder walk (no manifest) does not follow the symlink out either
    summary = make_shards(str(src), str(tmp_path / "out2"), progress=False)
    assert summary.samples_written == 1 and dict(summary.skipped)["link.wav"].startswith("outside")


def test_blocks_are_bounded_by_rows(tmp_path):
    path = str(tmp_path / "f.tar")
    write_shard(path, [good_sample(f"k{i:02d}", i % 10) for i in range(25)])
    sizes = [t.num_rows for t, _, _ in read_shard(path, options=ReaderOptions(block_rows=10)) if t is not None]
    assert sizes == [10, 10, 5]


def test_iter_samples_groups_members_with_directories_in_keys():
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in [("a/x.flac", b"1"), ("a/x.cls", b"2"), ("b/x.flac", b"3")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    buf.seek(0)
    stats = ShardStats("mem")
    out = list(iter_samples(buf, "mem", stats=stats))
    assert [(k, r["key"]) for k, r in out] == [("row", "a/x"), ("row", "b/x")]


def test_expand_shards_braces_globs_dirs(clean_shards, tmp_path):
    d, _ = clean_shards
    brace = expand_shards(os.path.join(d, "shard-{000001..000002}.tar"))
    assert [os.path.basename(u) for u in brace] == ["shard-000001.tar", "shard-000002.tar"]
    assert expand_shards(os.path.join(d, "*.tar")) == expand_shards(d)
    assert len(expand_shards(d)) == 4
    assert expand_shards([os.path.join(d, "shard-000003.tar"), os.path.join(d, "shard-000000.tar")]) == [
        os.path.join(d, "shard-000003.tar"), os.path.join(d, "shard-000000.tar")]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_shards(os.path.join(d, "nope-*.tar"))


def test_storage_failure_at_a_compressed_streams_end_is_unread_not_raised(tmp_path):
    """The store fails while the trailer of a .tar.gz (after the tar's end marker) is read:
    every sample was delivered, the checksum could not be verified, so the shard is reported
    unread from there; no exception escapes."""
    import gzip

    from specstream.io.samples import ShardStats, iter_samples
    from specstream.io.shards import ShardStream

    plain = str(tmp_path / "p.tar")
    write_shard(plain, [good_sample(f"k{i:02d}", i % 10) for i in range(20)])
    # 1 MiB of incompressible bytes after the end marker: the failure comes long after the members
    filler = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    packed = gzip.compress(open(plain, "rb").read() + filler)

    class FailsNearTheEnd(io.BytesIO):
        def read(self, n=-1):  # everything but the last 8 bytes (the CRC-32 and size), then a failure
            stop = len(packed) - 8
            if self.tell() >= stop:
                raise OSError("connection reset by peer")
            n = stop - self.tell() if n is None or n < 0 else min(n, stop - self.tell())
            return super().read(n)

    stats = ShardStats("x.tar.gz")
    out = list(iter_samples(ShardStream(FailsNearTheEnd(packed), len(packed)), "x.tar.gz", stats=stats))
    rows = [o for kind, o in out if kind == "row"]
    assert len(rows) == 20 and stats.unread is not None and "checksum was not verified" in stats.unread["reason"]
    assert out[-1][1]["key"] == f"<unread:{stats.unread['from_byte']}>"


def test_gzip_trailing_garbage_is_not_a_checksum_failure_but_a_crc_failure_is(tmp_path):
    import gzip

    plain = str(tmp_path / "p.tar")
    write_shard(plain, [good_sample(f"k{i:02d}", i % 10) for i in range(10)])
    packed = gzip.compress(open(plain, "rb").read())
    (tmp_path / "g.tar.gz").write_bytes(packed + b"RBtrailing garbage")
    rows, bad, stats = _collect(str(tmp_path / "g.tar.gz"))
    assert len(rows) == 10 and bad == [] and stats.corrupt is None and stats.unread is None
    crc = bytearray(packed)
    crc[-6] ^= 0xFF  # the CRC-32 in the trailer
    (tmp_path / "c.tar.gz").write_bytes(bytes(crc))
    rows, bad, stats = _collect(str(tmp_path / "c.tar.gz"))
    assert len(rows) == 10 and stats.corrupt is not None and "CRC check failed" in stats.corrupt
