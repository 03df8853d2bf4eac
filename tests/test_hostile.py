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
