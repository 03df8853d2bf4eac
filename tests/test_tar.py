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


def test_missing_end_marker_is_reported_after_the_members():
    """A stream cut on a member boundary: every member flows, then one fatal problem says where
    the shard ends (what followed, even the rest of the last sample, is unknowable); a cut
    inside the end-of-archive marker loses nothing and is not reported."""
    raw = make_tar(MEMBERS)
    full = members_of(raw)
    last = full[-1]
    end = last.offset + BLOCK  # c.flac is empty: header only
    got = members_of(raw[:end])
    assert [m.name for m in got[:-1]] == [n for n, _ in MEMBERS]
    assert isinstance(got[-1], Problem) and got[-1].fatal and got[-1].name is None
    assert f"ends at byte {end} without the end-of-archive marker" in got[-1].reason
    assert all(isinstance(m, Member) for m in members_of(raw[:end + 100]))
    assert all(isinstance(m, Member) for m in members_of(raw[:end + BLOCK]))


class Recorder(io.BytesIO):
    """Records the largest read() asked for."""

    def __init__(self, data):
        super().__init__(data)
        self.largest = 0

    def read(self, n=-1):
        self.largest = max(self.largest, n if n is not None and n >= 0 else 1 << 62)
        return super().read(n)


def header(name, size_field: bytes, typ=b"0") -> bytes:
    """A ustar header block with a raw size field (12 bytes) and a valid checksum."""
    info = tarfile.TarInfo(name)
    info.type = typ
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    block[124:136] = size_field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_negative_size_is_an_invalid_header():
    """Found by the fuzzer: a size field of -1 (valid checksum) made the reader read the whole
    rest of the archive into one member, past the size limit."""
    raw = make_tar(MEMBERS, tarfile.USTAR_FORMAT)
    off = next(m.offset for m in members_of(raw) if m.name == "a.cls")
    for field in (b"-0000000001\0", b"\xff" * 12):
        bad = raw[:off] + header("a.cls", field) + raw[off + BLOCK:]
        got = members_of(bad, max_member_bytes=600)
        assert [m.name for m in got if isinstance(m, Member)] == ["b.flac", "b.json", "c.flac"]
        assert [p.offset for p in got if isinstance(p, Problem) and p.name is None] == [off]


def test_declared_gigabytes_are_never_read_into_memory():
    """Found by the fuzzer: a pax or GNU long-name header declaring 10 GB was read with
    read(10 GB) (a buffered file allocates that much up front); with no member size limit, a
    member too. Now no read() asks for more than CHUNK bytes, an extended header over
    MAX_EXTENDED is damage, and the members after the lie still flow."""
    from specstream.io.tar import CHUNK, MAX_EXTENDED

    raw = make_tar(MEMBERS, tarfile.USTAR_FORMAT)
    huge = b"\x80" + (10 << 30).to_bytes(11, "big")
    for typ in (b"x", b"L", b"0"):
        stream = Recorder(header("big.flac", huge, typ) + b"\1" * BLOCK + raw)
        got = list(iter_members(stream, max_member_bytes=None))
        assert stream.largest <= CHUNK
        flowed = [n for n, _ in MEMBERS][0 if typ == b"0" else 1:]
        assert [m.name for m in got if isinstance(m, Member)] == flowed
        assert isinstance(got[0], Problem) and not got[0].fatal
        if typ == b"0":
            assert got[0].name == "big.flac" and "size field is wrong" in got[0].reason
        else:  # the damaged extended header takes the member it describes (a.flac) with it
            assert got[0].name is None and f"over the limit of {MAX_EXTENDED} bytes" in got[0].reason
            assert "'a.flac'" in got[0].reason
        cut = list(iter_members(Recorder(header("big.flac", huge, typ) + b"\1" * 5000)))
        assert len(cut) == 1 and cut[0].fatal and ("ends inside it" in cut[0].reason or "5000 of" in cut[0].reason)


def test_a_size_that_swallows_the_next_member_is_caught():
    """Found by the fuzzer: a.cls's size enlarged (valid checksum) to cover b.flac made a.cls
    deliver b.flac's header and bytes as its own, and b.flac vanished. The header found at a
    block boundary inside the member gives it away; reading goes on from there."""
    raw = make_tar(MEMBERS, tarfile.USTAR_FORMAT)
    full = {m.name: m.offset for m in members_of(raw)}
    a, b = full["a.cls"], full["b.json"]  # a.cls swallows b.flac (header + 2 blocks)
    bad = raw[:a] + header("a.cls", b"%011o\0" % (b - a - BLOCK)) + raw[a + BLOCK:]
    got = members_of(bad)
    assert [m.name for m in got if isinstance(m, Member)] == ["a.flac", "b.flac", "b.json", "c.flac"]
    (p,) = [p for p in got if isinstance(p, Problem)]
    assert p.name == "a.cls" and f"a tar header follows at byte {full['b.flac']}" in p.reason


def test_a_tar_inside_the_tar_is_just_a_member():
    inner = make_tar([("x.flac", b"1")], tarfile.USTAR_FORMAT)
    got = members_of(make_tar([("k.tar", inner), ("k.flac", b"2")]))
    assert [(m.name, m.data) for m in got] == [("k.tar", inner), ("k.flac", b"2")]


def test_zero_blocks_inside_the_archive_do_not_end_it():
    """Found by the fuzzer: two zero blocks between members (a destroyed header pair, or a
    wrong size landing in a WAV's silence) ended the archive silently, losing everything after."""
    raw = make_tar(MEMBERS, tarfile.USTAR_FORMAT)
    off = next(m.offset for m in members_of(raw) if m.name == "b.flac")
    got = members_of(raw[:off] + bytes(2 * BLOCK) + raw[off:])
    assert [m.name for m in got if isinstance(m, Member)] == [n for n, _ in MEMBERS]
    (p,) = [p for p in got if isinstance(p, Problem)]
    assert p.offset == off and not p.fatal and "followed by more members" in p.reason


def test_undecodable_names_become_readable_text():
    """Found by the fuzzer: a name that is not UTF-8 came out with surrogate escapes, which
    Arrow (and printing) refuse: read_shard raised. Now the bytes read as \\xNN."""
    raw = make_tar([("k\udcff.flac", b"1")])
    assert [m.name for m in members_of(raw)] == ["k\\xff.flac"]


def test_links_devices_and_fifos_are_reported_not_a_file():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, typ in [("k.flac", tarfile.SYMTYPE), ("k.cls", tarfile.LNKTYPE), ("dev", tarfile.CHRTYPE),
                          ("fifo", tarfile.FIFOTYPE), ("dir", tarfile.DIRTYPE)]:
            info = tarfile.TarInfo(name)
            info.type = typ
            info.linkname = "target" if typ in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            info.size = 100  # links & co. have no data, whatever the size field says
            tf.addfile(info)
        info = tarfile.TarInfo("k.json")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"{}"))
    got = members_of(buf.getvalue())
    assert [type(m).__name__ for m in got] == ["Problem"] * 5 + ["Member"]
    assert all(p.not_a_file and not p.fatal for p in got[:5])
    assert "symbolic link to 'target'" in got[0].reason and "hard link" in got[1].reason


def test_a_lost_pax_header_takes_the_member_after_it():
    """Found by the fuzzer: with its pax header destroyed, a member with a non-ASCII name came
    out under the stand-in name of its ustar header ("c01_?.cls": a wrong key, delivered)."""
    raw = bytearray(make_tar([("a.flac", b"1"), ("c01_é.cls", b"2"), ("c01_é.flac", b"3")]))
    pax = next(i for i in range(0, len(raw), BLOCK) if raw[i + 156:i + 157] == b"x")
    raw[pax:pax + BLOCK] = bytes(BLOCK)
    got = members_of(bytes(raw))
    assert [m.name for m in got if isinstance(m, Member)] == ["a.flac", "c01_é.flac"]
    (p,) = [p for p in got if isinstance(p, Problem)]
    assert p.offset == pax and "c01_?.cls" in p.reason and p.name is None


def test_two_long_name_headers_for_one_member_are_damage():
    """tarfile takes the first of two GNU long names, GNU tar the last: neither is trusted."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("d" * 120 + "/k.flac")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"1"))
    raw = buf.getvalue()
    doubled = raw[:2 * BLOCK] + raw  # the long-name header and its data, twice
    got = members_of(doubled)
    assert len(got) == 1 and isinstance(got[0], Problem) and "a second GNU long-name header" in got[0].reason
