"""Hostile configuration input: YAML alias bombs and oversized files are refused quickly,
with a readable error, by the library and the command line."""
import time

import pytest

from specstream.config import ConfigError, load_config

BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
source: {shards: [*i]}
"""


def test_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    from specstream.cli import main

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)  # 9**9 = 387 million strings once expanded
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(str(path))
    assert main(["run", str(path)]) == 2
    assert "alias bomb" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 30  # bounded work, not an hours-long expansion


def test_oversized_and_malformed_config_files_are_config_errors(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("source: {shards: x}\n# " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="over 1 MiB"):
        load_config(str(big))
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {shards: [unclosed\n")
    with pytest.raises(ConfigError, match="not a valid YAML config"):
        load_config(str(bad))
    ok = tmp_path / "ok.yaml"
    ok.write_text("source: {shards: x}\nlabels: {num_classes: 3}\ndeliver: {batch_size: &bs 32}\n"
                  "actors: {batch_size: *bs}\n")
    assert load_config(str(ok)).actors.batch_size == 32  # an ordinary alias is fine


def test_retry_settings_are_validated():
    with pytest.raises(ConfigError, match="retry_backoff_max"):
        load_config({"source": {"shards": "x", "retry_backoff": 2.0, "retry_backoff_max": 1.0},
                     "labels": {"num_classes": 2}})
    with pytest.raises(ConfigError, match="read_retries"):
        load_config({"source": {"shards": "x", "read_retries": -1}, "labels": {"num_classes": 2}})


def test_deeply_nested_yaml_is_a_config_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("source: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match="nests too deeply"):
        load_config(str(deep))


def test_make_shards_never_opens_a_fifo(tmp_path):
    """A FIFO named like audio in the source folder would block a reader forever: it is
    skipped with its reason."""
    import os

    import soundfile as sf

    from conftest import tone
    from specstream.io.make_shards import make_shards

    src = tmp_path / "src"
    src.mkdir()
    sf.write(str(src / "a.wav"), tone(0.2), 16000)
    os.mkfifo(src / "hang.wav")
    summary = make_shards(str(src), str(tmp_path / "out"), progress=False)
    assert summary.samples_written == 1
    assert dict(summary.skipped)["hang.wav"].startswith("not a regular file")


def test_plain_tar_named_like_bzip2_magic_is_read_as_tar(tmp_path):
    """GNU/ustar tars put the first member's name at byte 0: a key starting with 'BZh'
    must not be mistaken for bzip2's magic."""
    import io
    import tarfile

    from conftest import flac_bytes, tone
    from specstream.io.samples import read_shard

    path = tmp_path / "bzh.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
        for i in range(3):
            for ext, data in (("flac", flac_bytes(tone(0.1))), ("cls", b"1")):
                info = tarfile.TarInfo(f"BZh9_spk{i}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    assert open(path, "rb").read(3) == b"BZh"
    chunks = list(read_shard(str(path)))
    stats = chunks[-1][2]
    assert stats.compression is None and stats.unread is None and stats.rows == 3


def test_a_yaml_boolean_in_a_string_list_names_the_element_and_the_fix(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("source: {shards: x}\nlabels: {vocab: [yes, 'no']}\n")  # YAML 1.1: yes is true
    with pytest.raises(ConfigError, match=r"labels\.vocab\[0\]: expected str, got bool .*quote it"):
        load_config(str(cfg))


def test_inspect_exits_1_on_a_shard_not_read_to_its_end(tmp_path, capsys):
    """README: inspect lists shards not read to their end and exits 1 then."""
    import gzip
    import os

    from conftest import good_sample, write_shard
    from specstream.cli import main

    write_shard(str(tmp_path / "a.tar"), [good_sample(f"k{i}", i) for i in range(4)])
    assert main(["inspect", str(tmp_path)]) == 0
    packed = gzip.compress(open(tmp_path / "a.tar", "rb").read())
    os.remove(tmp_path / "a.tar")
    (tmp_path / "b.tar.gz").write_bytes(packed[: len(packed) // 2])
    assert main(["inspect", str(tmp_path)]) == 1
    assert "NOT READ to the end: 1 shard(s)" in capsys.readouterr().out
