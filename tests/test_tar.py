"""The damage-tolerant tar reader against archives written by Python's tarfile."""
import io
import tarfile

import pytest

from specstream.io.tar import BLOCK, Member, Problem, iter_members


def make_tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def members_of(raw: bytes, **kw):
    return list(iter_members(io.BytesIO(raw), **kw))


MEMBERS = [("a.flac", b"x" * 1000), ("a.cls", b"3"), ("b.flac", b"y" * 513), ("b.json", b"{}"),
           ("c.flac", b"")]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_reads_every_member_like_tarfile(fmt):
    raw = make_tar(MEMBERS, fmt)
    got = members_of(raw)
    assert all(isinstance(m, Member) for m in got)
    assert [(m.name, m.data) for m in got] == MEMBERS


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_and_unicode_names(fmt):
    long = "d" * 150 + "/" + "k" * 120 + ".flac"
    uni = "dir/clé_ü.json"
    got = members_of(make_tar([(long, b"1"), (uni, b"2")], fmt))
    assert [(m.name, m.data) for m in got] == [(long, b"1"), (uni, b"2")]


def test_truncated_archive_reports_the_cut_member_and_keeps_earlier_ones():
    raw = make_tar(MEMBERS)
    # cut inside b.flac's data: header of b.flac is at some offset; find it via a full read
    full = members_of(raw)
    b_off = next(m.offset for m in full if m.name == "b.flac")
    cut = raw[: b_off + BLOCK + 100]
    got = members_of(cut)
    assert [m.name for m in got if isinstance(m, Member)] == ["a.flac", "a.cls"]
    problems = [p for p in got if isinstance(p, Problem)]
    assert len(problems) == 1 and problems[0].name == "b.flac" and problems[0].fatal
    assert "100 of 513" in problems[0].reason


def test_truncated_inside_a_header():
    raw = make_tar(MEMBERS)
    full = members_of(raw)
    b_off = next(m.offset for m in full if m.name == "b.flac")
    got = members_of(raw[: b_off + 200])
    assert [m.name for m in got if isinstance(m, Member)] == ["a.flac", "a.cls"]
    assert isinstance(got[-1], Problem) and got[-1].fatal and got[-1].name is None


def test_corrupt_header_resyncs_and_later_members_flow():
    raw = bytearray(make_tar(MEMBERS, tarfile.USTAR_FORMAT))
    full = members_of(bytes(raw))
    b_off = next(m.offset for m in full if m.name == "b.flac")
    raw[b_off: b_off + 100] = b"\xff" * 100  # destroy b.flac's header (name + checksum mismatch)
    got = members_of(bytes(raw))
    names = [m.name for m in got if isinstance(m, Member)]
    assert names == ["a.flac", "a.cls", "b.json", "c.flac"]
    problems = [p for p in got if isinstance(p, Problem)]
    assert len(problems) == 1 and problems[0].offset == b_off and not problems[0].fatal


def test_member_over_limit_is_skipped_unread_and_the_rest_flows():
    got = members_of(make_tar(MEMBERS), max_member_bytes=600)
    assert [m.name for m in got if isinstance(m, Member)] == ["a.cls", "b.flac", "b.json", "c.flac"]
    problems = [p for p in got if isinstance(p, Problem)]
    assert [p.name for p in problems] == ["a.flac"] and "over the limit" in problems[0].reason


def test_missing_end_marker_is_not_a_problem():
    raw = make_tar(MEMBERS)
    full = members_of(raw)
    last = full[-1]
    got = members_of(raw[: last.offset + BLOCK])  # c.flac is empty: header only, no end blocks
    assert [m.name for m in got] == [n for n, _ in MEMBERS]
