"""Fuzzing the tar reader: real shards, mutated in ~20 families, read by the sample reader.

Shards: a webdataset shard (``TarWriter``: a pax header with the mtime before every member),
GNU-format (long names and link targets: ``L``/``K`` headers), pax-format (long and non-ASCII
names in ``path`` records) and ustar (prefix-split names) tars with symlinks, hard links,
devices, FIFOs, directories and a tar inside the tar.

Families: byte flips in member headers, extended headers, extended-header data and member
data; random multi-byte flips; truncation at and inside every member; wrong sizes (with a
fixed-up and with a stale checksum), huge sizes (octal, base-256), negative sizes; wrong
checksums; type changes; zeroed headers and zero blocks inserted between members;
extended headers declaring huge sizes; pax records with huge / negative / garbage sizes,
paths and lengths; GNU long names without NUL, empty, undecodable; duplicated and dropped
members; 0- and 1-byte shards, zero-filled and random shards.

Invariants, for every case:
- no exception escapes the reader, and no read() asks the stream for more than
  ``max(max_member_bytes, tar.CHUNK)`` bytes; traced memory stays under a bound tied to
  ``max_member_bytes`` and the shard's size;
- read = delivered + quarantined (``ShardStats`` and the yielded rows/entries agree);
- every delivered member is backed by a valid header at its offset, and its bytes are the
  archive's bytes after that header (nothing shifted or misaligned);
- every delivered row is *exactly* a sample of the archive: its key, every field and no
  missing one, as in the original shard, or as the mutated archive holds them at the
  original places (a flipped data byte is undetectable: tar has no data checksum), or (for
  mutations of pax / GNU long-name data, which carry no checksum either) as Python's
  tarfile reads the mutated archive;
- nothing good is lost: every original sample away from the damage (not the damaged sample,
  nor its neighbour on either side) is delivered byte-identical, or quarantined as before;
- quarantine reasons are one line, name byte offsets, hold no object reprs, and a rerun
  gives the same rows and reasons.

A seeded loop over explicit families rather than hypothesis: most families are systematic
(every member, every boundary, every field), each case needs an oracle tied to its family,
and a failure names its family, shard and mutation, which is already a minimal reproduction.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import tarfile
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from unittest import mock

import numpy as np
import pytest
from webdataset.tariterators import base_plus_ext

from conftest import flac_bytes, good_sample, tone, write_shard
from specstream.io import tar as tarmod
from specstream.io.samples import AUDIO_EXTS, TEXT_FIELDS, ReaderOptions, ShardStats, iter_samples, read_shard
from specstream.io.tar import BLOCK, Problem, iter_members

SEED = 20240611
MAX_MEMBER = 48 << 10  # max_member_bytes of every read: the largest original member is ~12 KB
READ_CAP = max(MAX_MEMBER, tarmod.CHUNK)
ZERO = bytes(BLOCK)
NO_DATA = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE)
_REPR = re.compile(r"object at 0x|<[A-Za-z_.]+ object")


def padded(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


# ----------------------------------------------------------------------------- shards


@dataclass
class Mem:
    name: str
    type: bytes
    chain: int  # first byte of the member's header chain (its extended headers, then its header)
    header: int  # its own header
    size: int  # data bytes (0 for links, devices...)
    end: int  # end of its padded data
    exts: List[Tuple[int, int, bytes]]  # (header offset, data size, type) of its extended headers
    sample: Optional[int] = None  # index of its sample, for regular members with a key


@dataclass
class Shard:
    name: str
    raw: bytes
    members: List[Mem]
    samples: List[Tuple[str, Dict[str, bytes]]]  # (key, whitelisted fields), in order
    expected: List[Optional[dict]]  # the row each sample gives, None when it is quarantined
    end: int  # end of the last member (the end-of-archive marker starts here)

    @property
    def rows(self) -> Dict[str, dict]:
        return {k: r for (k, _), r in zip(self.samples, self.expected) if r is not None}


def expected_row(key: str, fields: Dict[str, bytes]) -> Optional[dict]:
    """The row iter_samples makes of a sample's whitelisted fields (None: quarantined)."""
    if fields is None:
        return None
    fmt = next((e for e in AUDIO_EXTS if e in fields), None)
    if fmt is None:
        return None
    row = {"key": key, "audio": fields[fmt], "audio_format": fmt, "cls": None, "txt": None, "json": None}
    for name in TEXT_FIELDS:
        if name not in fields:
            continue
        try:
            text = fields[name].decode("utf-8")
            if name == "json" and not isinstance(json.loads(text), dict):
                return None
        except ValueError:
            return None
        row[name] = text.strip() if name == "cls" else text
    return row


def group(named: Sequence[Tuple[str, bytes]]) -> List[Tuple[str, Optional[Dict[str, bytes]]]]:
    """Consecutive members with one key -> samples (fields None: a field appears twice)."""
    out: List[Tuple[str, Optional[Dict[str, bytes]]]] = []
    for name, data in named:
        key, ext = base_plus_ext(name)
        if key is None:
            continue
        base = key.rsplit("/", 1)[-1]
        if base.startswith("__") and base.endswith("__"):
            continue
        ext = ext.lower()
        if not out or out[-1][0] != key:
            out.append((key, {}))
        fields = out[-1][1]
        if fields is None:
            continue
        if ext in AUDIO_EXTS or ext in TEXT_FIELDS:
            if ext in fields:
                out[-1] = (key, None)
            else:
                fields[ext] = data
    return out


def _text_name(name: str) -> str:
    """tarfile's surrogate-escaped name as the reader spells it (\\xNN for undecodable bytes)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def layout(name: str, raw: bytes) -> Shard:
    members: List[Mem] = []
    named = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        for ti in tf:
            own = ti.offset_data - BLOCK
            exts, pos = [], ti.offset
            while pos < own:
                h = tarfile.TarInfo.frombuf(raw[pos:pos + BLOCK], "utf-8", "surrogateescape")
                exts.append((pos, h.size, h.type))
                pos += BLOCK + padded(h.size)
            has_data = ti.type not in NO_DATA
            m = Mem(_text_name(ti.name), ti.type, ti.offset, own, ti.size if has_data else 0,
                    ti.offset_data + (padded(ti.size) if has_data else 0), exts)
            members.append(m)
            if ti.isreg():
                named.append((m.name, tf.extractfile(ti).read(), len(members) - 1))
    samples = []
    for name_, data, idx in named:
        key, _ = base_plus_ext(name_)
        if key is None:
            continue
        if not samples or samples[-1][0] != key:
            samples.append((key, []))
        samples[-1][1].append((name_, data, idx))
    out_samples, expected = [], []
    for i, (key, items) in enumerate(samples):
        for _, _, idx in items:
            members[idx].sample = i
        (k, fields), = group([(n, d) for n, d, _ in items])
        out_samples.append((key, fields))
        expected.append(expected_row(key, fields))
    return Shard(name, raw, members, out_samples, expected, members[-1].end)


def tar_bytes(entries, fmt) -> bytes:
    """entries: (name, bytes) for files, or (name, type, extra dict) for other members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e[0])
            ti.mtime = 1_700_000_000
            if len(e) == 2:
                ti.size = len(e[1])
                tf.addfile(ti, io.BytesIO(e[1]))
            else:
                ti.type = e[1]
                for k, v in e[2].items():
                    setattr(ti, k, v)
                tf.addfile(ti)
    return buf.getvalue()


def _fields(key: str, label: int, seconds: float, long_dir: str = "") -> List[Tuple[str, bytes]]:
    x = tone(seconds, freq=220 + 40 * label)
    return [(f"{long_dir}{key}.cls", str(label).encode()), (f"{long_dir}{key}.flac", flac_bytes(x)),
            (f"{long_dir}{key}.json", json.dumps({"label": label, "key": key}).encode())]


def build_shards(tmp) -> List[Shard]:
    shards = []
    # 1. webdataset's TarWriter (clock fixed: the pax mtime records are then the same every run)
    silence = flac_bytes(np.zeros(2400, np.float32), fmt="WAV")  # zero blocks inside a member
    samples = []
    for i, secs in enumerate([0.03, 0.06, 0.02, 0.0, 0.05, 0.04]):
        s = {"__key__": f"a{i:02d}", "cls": str(i).encode(),
             "json": json.dumps({"label": i}).encode()}
        if i == 3:
            s["wav"] = silence
        else:
            s["flac"] = flac_bytes(tone(secs, freq=300 + 30 * i))
        samples.append(s)
    samples[1]["txt"] = "hello there".encode()
    samples[2]["json"] = b'{"label": '  # a sample that is quarantined even undamaged
    path = os.path.join(tmp, "wds.tar")
    with mock.patch("time.time", return_value=1_700_000_000.25):
        write_shard(path, samples)
    shards.append(layout("wds", open(path, "rb").read()))
    # 2. GNU format: long names (L) and long link targets (K), links, devices, FIFOs, directories
    d1, d2 = "d" * 110 + "/", "e" * 60 + "/" + "f" * 60 + "/"
    entries = _fields("b00", 0, 0.03, d1) + [
        ("b00.link", tarfile.SYMTYPE, {"linkname": "t" * 120}),
        ("b00.hard", tarfile.LNKTYPE, {"linkname": d1 + "b00.flac"})] + _fields("b01", 1, 0.02) + [
        ("dev/null0", tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}),
        ("b01.fifo", tarfile.FIFOTYPE, {}), ("somedir/", tarfile.DIRTYPE, {})] + \
        _fields("b02", 2, 0.04, d2) + _fields("b03", 3, 0.01)
    shards.append(layout("gnu", tar_bytes(entries, tarfile.GNU_FORMAT)))
    # 3. pax format: long and non-ASCII names in path records
    entries = _fields("c00", 0, 0.02, "p" * 130 + "/") + [("blk0", tarfile.BLKTYPE, {"devmajor": 8})] + \
        _fields("c01_é", 1, 0.03) + _fields("c02", 2, 0.01) + [("c02.fifo", tarfile.FIFOTYPE, {})] + \
        _fields("c03", 3, 0.02, "q" * 99 + "/")
    shards.append(layout("pax", tar_bytes(entries, tarfile.PAX_FORMAT)))
    # 4. ustar: names split into prefix + name; a tar inside the tar (an ignored field)
    inner = tar_bytes([("inner.flac", b"not the outer archive"), ("inner.cls", b"7")], tarfile.USTAR_FORMAT)
    entries = _fields("d00", 0, 0.02, "u" * 90 + "/" + "v" * 50 + "/") + _fields("d01", 1, 0.03)
    entries.insert(4, ("d01.tar", inner))
    entries += [("d01.sym", tarfile.SYMTYPE, {"linkname": "d00"})] + _fields("d02", 2, 0.01)
    shards.append(layout("ustar", tar_bytes(entries, tarfile.USTAR_FORMAT)))
    return shards


# ----------------------------------------------------------------------------- mutations


@dataclass
class Case:
    family: str
    shard: Shard
    raw: bytes
    what: str  # the mutation, in words: enough to reproduce it
    spans: List[Tuple[int, int]] = field(default_factory=list)  # original bytes touched (in place)
    cut: Optional[int] = None  # truncated to this length
    boundary: Optional[int] = None  # something inserted at this original offset
    tarfile_view: bool = False  # tarfile's reading of the mutated archive is a valid answer
    same_layout: bool = False  # byte offsets of the original members still hold
    check_live: bool = True  # check that samples away from the damage are delivered


def chk_fixed(block: bytearray) -> bytearray:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return block


def put(raw: bytes, off: int, data: bytes) -> bytes:
    return raw[:off] + data + raw[off + len(data):]


def set_field(raw: bytes, hdr: int, start: int, value: bytes, fix: bool = True) -> bytes:
    block = bytearray(raw[hdr:hdr + BLOCK])
    block[start:start + len(value)] = value
    if fix:
        chk_fixed(block)
    return put(raw, hdr, bytes(block))


def num(n: int, width: int = 12) -> bytes:
    if 0 <= n < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, n)
    if n >= 0:
        return b"\x80" + n.to_bytes(width - 1, "big")
    return b"\xff" + (256 ** (width - 1) + n).to_bytes(width - 1, "big")


def regular(s: Shard) -> List[Mem]:
    return [m for m in s.members if m.type not in NO_DATA]


def flip(raw: bytes, pos: int, rng: random.Random) -> bytes:
    return put(raw, pos, bytes([raw[pos] ^ rng.randrange(1, 256)]))


def fam_flip_data(s: Shard, rng):
    for m in regular(s):
        if m.size == 0:
            continue
        data = m.header + BLOCK
        for pos in sorted({data, data + m.size - 1, data + rng.randrange(m.size), m.end - 1}):
            yield Case("flip_data", s, flip(s.raw, pos, rng), f"flip byte {pos} ({m.name} data)",
                       [(pos, pos + 1)], same_layout=True)


HEADER_SPOTS = [0, 5, 99, 100, 124, 130, 135, 148, 153, 154, 155, 156, 257, 262, 345, 511]


def fam_flip_header(s: Shard, rng):
    for m in s.members:
        for spot in rng.sample(HEADER_SPOTS, 3) + [rng.randrange(BLOCK)]:
            pos = m.header + spot
            yield Case("flip_header", s, flip(s.raw, pos, rng), f"flip byte {pos} ({m.name} header +{spot})",
                       [(pos, pos + 1)], same_layout=True)


def fam_flip_ext(s: Shard, rng):
    for m in s.members:
        for hdr, size, typ in m.exts:
            for spot in rng.sample(HEADER_SPOTS, 3):
                pos = hdr + spot
                yield Case("flip_ext_header", s, flip(s.raw, pos, rng),
                           f"flip byte {pos} ({m.name}: {typ!r} header +{spot})", [(pos, pos + 1)], same_layout=True)
            for k in sorted({0, 1, size - 1, rng.randrange(size), rng.randrange(size)}):
                pos = hdr + BLOCK + k
                yield Case("flip_ext_data", s, flip(s.raw, pos, rng),
                           f"flip byte {pos} ({m.name}: {typ!r} data +{k})", [(pos, pos + 1)], same_layout=True)


def fam_flip_random(s: Shard, rng):
    for i in range(60):
        raw = bytearray(s.raw)
        spots = sorted({rng.randrange(len(raw)) for _ in range(rng.choice([1, 2, 3, 5, 8, 16]))})
        for p in spots:
            raw[p] ^= rng.randrange(1, 256)
        yield Case("flip_random", s, bytes(raw), f"flip bytes {spots}", [(p, p + 1) for p in spots],
                   same_layout=True)


def fam_truncate(s: Shard, rng):
    cuts = set()
    for m in s.members:
        cuts.update({m.chain, m.header, m.header + BLOCK, m.end, m.header + rng.randrange(1, BLOCK)})
        for hdr, size, _ in m.exts:
            cuts.update({hdr + BLOCK, hdr + BLOCK + rng.randrange(max(1, size))})
        if m.size:
            cuts.update({m.header + BLOCK + m.size, m.header + BLOCK + rng.randrange(m.size)})
    cuts.update({s.end + 1, s.end + 100, s.end + BLOCK, s.end + 2 * BLOCK, len(s.raw) - 1})
    for c in sorted(cuts):
        yield Case("truncate", s, s.raw[:c], f"truncate to {c} bytes", cut=c)


def fam_size(s: Shard, rng):
    regs = regular(s)
    for i, m in enumerate(regs):
        nxt = s.members[s.members.index(m) + 1] if s.members.index(m) + 1 < len(s.members) else None
        sizes = {
            "0": 0, "-1 byte": max(0, m.size - 1), "+1 byte": m.size + 1, "-1 block": max(0, m.size - BLOCK),
            "+1 block": m.size + BLOCK, "+into next header": padded(m.size) + 100,
            "to end of archive": len(s.raw) - m.header - BLOCK, "+1 MiB": m.size + (1 << 20),
            "8 GiB": 8 ** 11 - 1, "2^40 base-256": 1 << 40, "2^80 base-256": 1 << 80,
        }
        if nxt is not None:
            sizes["swallow next member"] = nxt.end - m.header - BLOCK
        for label in rng.sample(sorted(sizes), 5):  # each label still meets ~20 members
            n = sizes[label]
            # within the member's last block, a wrong size moves no header: undetectable, the
            # member is what its header says (tarfile agrees); beyond it, it must be caught
            yield Case("size_fixed", s, set_field(s.raw, m.header, 124, num(n)),
                       f"{m.name}: size {n} ({label}), checksum fixed", [(m.header, m.header + BLOCK)],
                       tarfile_view=padded(n) == padded(m.size))
        yield Case("size_stale", s, set_field(s.raw, m.header, 124, num(m.size + BLOCK), fix=False),
                   f"{m.name}: size {m.size + BLOCK}, stale checksum", [(m.header, m.header + BLOCK)])
        for label, value in rng.sample([("-1 octal", b"-0000000001\0"), ("-512 base-256", num(-512)),
                                        ("garbage", b"12x45678901\0"), ("0o prefix", b"0o777\0\0\0\0\0\0\0"),
                                        ("underscore", b"1_000\0\0\0\0\0\0\0"), ("spaces", b" " * 12)], 2):
            yield Case("size_invalid", s, set_field(s.raw, m.header, 124, value),
                       f"{m.name}: size field {value!r} ({label}), checksum fixed", [(m.header, m.header + BLOCK)])


def fam_checksum(s: Shard, rng):
    for m in s.members:
        block = s.raw[m.header:m.header + BLOCK]
        good = int(block[148:154], 8)
        for label, value in rng.sample([("+1", b"%06o\0 " % (good + 1)), ("-1", b"%06o\0 " % (good - 1)),
                                        ("garbage", b"zz1234\0 "), ("spaces", b" " * 8), ("NULs", b"\0" * 8),
                                        ("base-256", b"\x80" + good.to_bytes(7, "big")), ("negative", b"\xff" * 8),
                                        ("no NUL", b"%07o " % good)], 4):
            yield Case("checksum", s, set_field(s.raw, m.header, 148, value, fix=False),
                       f"{m.name}: checksum field {value!r} ({label})", [(m.header, m.header + BLOCK)])


def fam_type(s: Shard, rng):
    for m in s.members:
        for t in rng.sample([b"0", b"\0", b"1", b"2", b"3", b"5", b"6", b"7", b"S", b"V", b"x", b"L", b"g", b"Z"], 4):
            if t == m.type:
                continue
            yield Case("type", s, set_field(s.raw, m.header, 156, t),  # a valid header says so
                       f"{m.name}: type {m.type!r} -> {t!r}, checksum fixed", [(m.header, m.end)], tarfile_view=True)
        if m.type in NO_DATA:  # links & co. have no data, whatever their size says
            for n in (1000, 1 << 40):
                yield Case("nodata_size", s, set_field(s.raw, m.header, 124, num(n)),
                           f"{m.name} (type {m.type!r}): size {n}, checksum fixed", [])


def fam_zero(s: Shard, rng):
    for m in s.members:
        for hdr in [m.header] + [h for h, _, _ in m.exts]:
            yield Case("zero_header", s, put(s.raw, hdr, ZERO), f"zero the header at {hdr} ({m.name})",
                       [(hdr, hdr + BLOCK)], same_layout=True)
        for k in (1, 2, 3):
            yield Case("insert_zero", s, s.raw[:m.chain] + ZERO * k + s.raw[m.chain:],
                       f"insert {k} zero block(s) at {m.chain} (before {m.name})", boundary=m.chain)


def _ext_replace(s: Shard, m: Mem, k: int, data: bytes, declared: Optional[int] = None) -> bytes:
    """The shard with the data of m's k-th extended header replaced (its size field set to
    ``declared``, default the new length, checksum fixed)."""
    hdr, size, _ = m.exts[k]
    block = bytearray(s.raw[hdr:hdr + BLOCK])
    block[124:136] = num(len(data) if declared is None else declared)
    chk_fixed(block)
    body = data + bytes(padded(len(data)) - len(data))
    return s.raw[:hdr] + bytes(block) + body + s.raw[hdr + BLOCK + padded(size):]


def _record(body: bytes, end: bytes = b"\n") -> bytes:
    """A pax record ``"%d %s\n"`` whose length field counts itself."""
    digits = 1
    while len(str(len(body) + 2 + digits)) != digits:
        digits += 1
    return b"%d %s%s" % (len(body) + 1 + len(end) + digits, body, end)


def _pax(*records: bytes) -> bytes:
    return b"".join(_record(r) for r in records)


def fam_extended(s: Shard, rng):
    big_done = False
    for m in s.members:
        for k, (hdr, size, typ) in enumerate(m.exts):
            old = s.raw[hdr + BLOCK:hdr + BLOCK + size]
            span = [(m.chain, m.end)]
            # the extended header's own size field: huge, over the cap, past EOF
            for n in rng.sample([tarmod.MAX_EXTENDED + 1, 8 ** 11 - 1, 1 << 40, 10 << 30], 2):
                yield Case("ext_size", s, set_field(s.raw, hdr, 124, num(n)),
                           f"{m.name}: {typ!r} header declares {n} bytes", span)
            if not big_done:  # (1 MiB shards: once per shard)
                big_done = True
                yield Case("ext_size", s, _ext_replace(s, m, k, b"x" * (tarmod.MAX_EXTENDED + 10)),
                           f"{m.name}: {typ!r} header holding {tarmod.MAX_EXTENDED + 10} bytes", span)
            if typ == tarfile.XHDTYPE:
                path = m.name.encode()
                variants = {
                    "size huge": _pax(b"path=" + path, b"size=99999999999999"),
                    "size negative": _pax(b"path=" + path, b"size=-5"),
                    "size garbage": _pax(b"path=" + path, b"size=12ab"),
                    "size empty": _pax(b"path=" + path, b"size="),
                    "size 0": _pax(b"path=" + path, b"size=0"),
                    "size right": _pax(b"path=" + path, b"size=%d" % m.size),
                    "size +1 block": _pax(b"path=" + path, b"size=%d" % (m.size + BLOCK)),
                    "length huge": b"999999999 path=" + path + b"\n",
                    "length 0": b"0 path=" + path + b"\n",
                    "length negative": b"-5 path=" + path + b"\n",
                    "length short": b"3 path=" + path + b"\n",
                    "length long": b"%d path=" % (len(path) + 40) + path + b"\n" + b"x" * 5,
                    "no newline": _record(b"path=" + path, end=b"!"),
                    "no equals": _pax(b"pathvalue"),
                    "path empty": _pax(b"path="),
                    "path huge": _pax(b"path=" + b"z" * 5000 + b".flac"),
                    "path undecodable": _pax(b"path=" + path.replace(b".", b"\xff.", 1)),
                    "path with NUL": _pax(b"path=" + path.replace(b".", b"\0.", 1)),
                    "path slash": _pax(b"path=" + path + b"/"),
                    "sparse": _pax(b"path=" + path, b"GNU.sparse.major=1", b"GNU.sparse.minor=0"),
                    "records then NULs": _pax(b"path=" + path) + b"\0" * 30,
                    "records then junk": _pax(b"path=" + path) + b"junk",
                    "only mtime": _pax(b"mtime=1700000000.5"),
                    "empty": b"",
                }
            elif typ == tarfile.GNUTYPE_LONGNAME:
                variants = {"no NUL": old.rstrip(b"\0"), "empty": b"", "NUL first": b"\0" + old,
                            "undecodable": old.replace(b".", b"\xfe.", 1), "huge": b"y" * 70000 + b".flac\0"}
            else:
                variants = {"empty": b"", "garbage": bytes(rng.randrange(256) for _ in range(300))}
            for label in rng.sample(sorted(variants), min(len(variants), 8)):
                data = variants[label]
                yield Case("ext_records", s, _ext_replace(s, m, k, data), f"{m.name}: {typ!r} data {label}",
                           span, tarfile_view=True)


def fam_structure(s: Shard, rng):
    for m in s.members:
        chain = s.raw[m.chain:m.end]
        yield Case("duplicate", s, s.raw[:m.end] + chain + s.raw[m.end:], f"{m.name} twice", boundary=m.end,
                   tarfile_view=True, check_live=False)
        yield Case("drop", s, s.raw[:m.chain] + s.raw[m.end:], f"{m.name} removed", boundary=m.chain,
                   tarfile_view=True, check_live=False)


def fam_tiny(shards: List[Shard], rng):
    s = shards[0]
    first = s.members[0]
    fixed = [
        ("0 bytes", b""), ("1 byte NUL", b"\0"), ("1 byte A", b"A"), ("1 byte FF", b"\xff"),
        ("511 zeros", bytes(511)), ("512 zeros", ZERO), ("1024 zeros", ZERO * 2), ("10 KB zeros", bytes(10240)),
        ("one zero block then junk", ZERO + b"junk" * 200), ("header only", s.raw[first.chain:first.header + BLOCK]),
        ("header and half the data", s.raw[first.chain:first.header + BLOCK + 1]),
        ("first member, no end marker", s.raw[first.chain:first.end]),
        ("first member twice", s.raw[first.chain:first.end] * 2 + ZERO * 2),
        ("a header declaring 10 GB", bytes(chk_fixed(bytearray(
            s.raw[first.header:first.header + 124] + num(10 << 30) + s.raw[first.header + 136:first.header + BLOCK])))),
    ]
    for label, raw in fixed:
        yield Case("tiny", s, raw, label, check_live=False)
    for i in range(150):
        n = rng.choice([1, 7, 511, 512, 513, 1024, 4096, 20000, 70000])
        raw = bytearray(rng.randbytes(n))
        if i % 3 == 0 and n >= 4 * BLOCK:  # a real header planted among random blocks
            m = rng.choice(s.members)
            at = rng.randrange(n // BLOCK - 2) * BLOCK
            raw[at:at + BLOCK] = s.raw[m.header:m.header + BLOCK]
        yield Case("random", s, bytes(raw), f"{n} random bytes (seeded, case {i})", check_live=False)


FAMILIES: Dict[str, Callable] = {
    "flip_data": fam_flip_data, "flip_header": fam_flip_header, "flip_ext": fam_flip_ext,
    "flip_random": fam_flip_random, "truncate": fam_truncate, "size": fam_size, "checksum": fam_checksum,
    "type": fam_type, "zero": fam_zero, "extended": fam_extended, "structure": fam_structure,
}


# ----------------------------------------------------------------------------- oracle


class FuzzStream:
    """A BytesIO that records every read() size asked for and may answer with short reads."""

    def __init__(self, data: bytes, rng: Optional[random.Random] = None):
        self._b = io.BytesIO(data)
        self._rng = rng
        self.bad_requests: List[Optional[int]] = []

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > READ_CAP:
            self.bad_requests.append(n)
        elif self._rng is not None and n > 1:
            n = self._rng.randint(1, n)
        return self._b.read(n)


def run_reader(raw: bytes, rng=None):
    stream = FuzzStream(raw, rng)
    stats = ShardStats("fuzz")
    out = list(iter_samples(stream, "fuzz", ReaderOptions(max_member_bytes=MAX_MEMBER), stats))
    return out, stats, stream


def tarfile_view(raw: bytes) -> Optional[List[Tuple[str, Optional[Dict[str, bytes]]]]]:
    """The samples Python's tarfile reads from raw, if it reads it cleanly to an end-of-archive
    marker followed by nothing but zeros; else None."""
    try:
        named = []
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for ti in tf:
                if ti.isreg():
                    if ti.type == tarfile.GNUTYPE_SPARSE or "GNU.sparse.major" in ti.pax_headers:
                        return None
                    data = tf.extractfile(ti).read()
                    if len(data) != ti.size:
                        return None
                    named.append((_text_name(ti.name), data))
            end = tf.offset
        if raw[end:end + BLOCK] != ZERO or any(_valid_header(raw[p:p + BLOCK]) for p in range(end, len(raw), BLOCK)):
            return None  # tarfile stopped early: at damage, or at zeros with members after them
        return group(named)
    except (tarfile.TarError, ValueError, OverflowError, EOFError):
        return None


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # surrogate escapes
        return False


def _valid_header(block: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


def row_view(row: dict) -> dict:
    return {k: row[k] for k in ("key", "audio", "audio_format", "cls", "txt", "json")}


def renamed_view(case: Case) -> List[Tuple[str, Optional[Dict[str, bytes]]]]:
    """For mutations that move nothing: the samples the original members make with the bytes
    the mutated archive holds at their places, names included (a flip in a GNU long name or a
    pax path record, which carry no checksum, renames the member: undetectable)."""
    raw = case.raw
    named = []
    for m in case.shard.members:
        if m.type in NO_DATA:
            continue
        try:
            name = _text_name(tarfile.TarInfo.frombuf(raw[m.header:m.header + BLOCK], "utf-8", "surrogateescape").name)
        except tarfile.HeaderError:
            name = m.name  # a broken header: the member is not delivered anyway
        for hdr, size, typ in m.exts:
            data = raw[hdr + BLOCK:hdr + BLOCK + size]
            if typ == tarfile.GNUTYPE_LONGNAME:
                name = _text_name(data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))
            elif typ == tarfile.XHDTYPE:  # records as tarfile parses them
                pos = 0
                while (rec := re.compile(rb"(\d+) ([^=]+)=").match(data, pos)) and int(rec.group(1)):
                    if rec.group(2) == b"path":
                        value = data[rec.end(2) + 1:rec.start(1) + int(rec.group(1)) - 1]
                        name = _text_name(value.decode("utf-8", "surrogateescape")).rstrip("/")
                    pos += int(rec.group(1))
        named.append((name, raw[m.header + BLOCK:m.header + BLOCK + m.size]))
    return group(named)


def at_risk(case: Case) -> Optional[set]:
    """Original sample indices the damage may take down (None: all of them)."""
    s = case.shard
    risky = set()
    n = len(s.samples)

    def around(i):
        risky.update({i - 1, i, i + 1})

    def neighbours_of(idx):  # samples of the regular members before and after member idx
        before = [m.sample for m in s.members[:idx] if m.sample is not None]
        after = [m.sample for m in s.members[idx + 1:] if m.sample is not None]
        if before:
            around(before[-1])
        if after:
            around(after[0])

    for a, b in case.spans:
        hit = False
        for idx, m in enumerate(s.members):
            if a < m.end and b > m.chain:
                hit = True
                if m.sample is not None:
                    around(m.sample)
                else:
                    neighbours_of(idx)
        if not hit and a >= s.end:  # the end-of-archive marker or what follows it
            around(n - 1)
    if case.boundary is not None:
        for idx, m in enumerate(s.members):
            if m.end == case.boundary or m.chain == case.boundary:
                if m.sample is not None:
                    around(m.sample)
                else:
                    neighbours_of(idx)
    if case.cut is not None:
        if case.cut > s.end:
            return risky
        last = max((m.sample for m in s.members if m.sample is not None and m.end <= case.cut), default=-1)
        # samples wholly before the cut, but the last of them (the cut may be a lost member of it)
        whole = {i for i in range(n) if all(m.end <= case.cut for m in s.members if m.sample == i)}
        risky.update(set(range(n)) - whole)
        risky.add(last)
    return risky


def check_case(case: Case, rng: random.Random, rerun: bool, via_file: Optional[str], trace: bool) -> dict:
    s = case.shard
    where = f"[{case.family} / {s.name}] {case.what}"
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out, stats, stream = run_reader(case.raw, rng if rng.random() < 0.3 else None)
    except Exception as e:  # noqa: BLE001 - the invariant under test
        raise AssertionError(f"{where}: the reader raised {type(e).__name__}: {e}") from e
    finally:
        elapsed = time.perf_counter() - t0
        if trace:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    if trace:  # one member at most (bounded by max_member_bytes) and what the reader returned
        bound = 2 * MAX_MEMBER + 2 * len(case.raw) + (128 << 10)
        assert peak < bound, f"{where}: traced memory peak {peak} over {bound}"
    assert not stream.bad_requests, f"{where}: read() asked for {stream.bad_requests[:3]} bytes"
    rows = [row_view(o) for k, o in out if k == "row"]
    bad = [o for k, o in out if k == "quarantine"]
    assert stats.samples == stats.rows + stats.quarantined == len(rows) + len(bad), \
        f"{where}: samples {stats.samples}, rows {stats.rows}+{len(rows)}, quarantined {stats.quarantined}+{len(bad)}"
    for e in bad:
        r = e["reason"]
        assert r and "\n" not in r and not _REPR.search(r), f"{where}: reason {r!r}"
        assert isinstance(e["key"], str) and utf8(e["key"]), f"{where}: key {e['key']!r} is not UTF-8 text"
    for r in rows:
        assert utf8(r["key"]), f"{where}: key {r['key']!r} is not UTF-8 text (Arrow refuses it)"
    # every delivered member: a valid header at its offset, the archive's bytes after it (read
    # with no size limit: a declared size still never reaches read() unchunked)
    unlimited = FuzzStream(case.raw)
    for item in iter_members(unlimited, None):
        assert 0 <= item.offset <= len(case.raw), f"{where}: offset {item.offset} outside the shard"
        if isinstance(item, Problem):
            assert "\n" not in item.reason and not _REPR.search(item.reason)
            continue
        ti = tarfile.TarInfo.frombuf(case.raw[item.offset:item.offset + BLOCK], "utf-8", "surrogateescape")
        assert ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE), f"{where}: {item.name} type {ti.type}"
        start = item.offset + BLOCK
        assert item.data == case.raw[start:start + len(item.data)], f"{where}: {item.name} bytes misaligned"
        pax_size = b"size=" in case.raw[max(0, item.offset - 8 * BLOCK):item.offset]
        assert len(item.data) == ti.size or pax_size, f"{where}: {item.name} has {len(item.data)} of {ti.size}"
    assert not unlimited.bad_requests, f"{where}: with no size limit, read() asked for {unlimited.bad_requests[:3]}"
    # every delivered row is exactly a sample of the archive
    allowed: Dict[str, List[dict]] = {}
    for k, r in s.rows.items():
        allowed.setdefault(k, []).append(r)
    if case.same_layout:
        for key, fields in renamed_view(case):
            r = expected_row(key, fields)
            if r is not None:
                allowed.setdefault(key, []).append(r)
    view = tarfile_view(case.raw) if case.tarfile_view else None
    for key, fields in view or []:
        r = expected_row(key, fields)
        if r is not None:
            allowed.setdefault(key, []).append(r)
    for r in rows:
        assert r in allowed.get(r["key"], []), \
            f"{where}: delivered row {r['key']!r} is not a sample of the archive " \
            f"(fields {[k for k in ('cls', 'txt', 'json') if r[k] is not None]}, {len(r['audio'])} audio bytes)"
    # nothing good lost
    if case.check_live:
        risky = at_risk(case)
        views = [v for v in (view, renamed_view(case) if case.same_layout else None) if v is not None]
        for v in views:  # samples a (legitimate) renaming touched, and their neighbours
            changed = {k for k in {k for k, _ in v} | {k for k, _ in s.samples}
                       if [f for kk, f in v if kk == k] != [f for kk, f in s.samples if kk == k]}
            for i, (k, _) in enumerate(s.samples):
                if k in changed:
                    risky.update({i - 1, i, i + 1})
        got = {r["key"]: r for r in rows}
        quarantined = {e["key"] for e in bad}
        for i, (key, _) in enumerate(s.samples):
            if i in risky:
                continue
            if s.expected[i] is not None:
                why = next((e["reason"] for e in bad if e["key"] == key), "missing")
                assert got.get(key) == s.expected[i], \
                    f"{where}: sample {key!r}, away from the damage, was not delivered intact ({why})"
            else:
                assert key in quarantined and key not in got, f"{where}: bad sample {key!r} not quarantined"
    result = {"rows": rows, "bad": bad}
    if rerun:
        again, _, _ = run_reader(case.raw)
        assert [(k, row_view(o) if k == "row" else o) for k, o in again] == \
            [(k, row_view(o) if k == "row" else o) for k, o in out], f"{where}: a rerun differs"
    if via_file is not None:  # the whole path: open_shard, Arrow blocks
        with open(via_file, "wb") as f:
            f.write(case.raw)
        frows, fbad = [], []
        fstats = None
        for table, q, fstats in read_shard(via_file, options=ReaderOptions(max_member_bytes=MAX_MEMBER)):
            frows.extend(table.to_pylist() if table is not None else [])
            fbad.extend(q)
        assert [row_view(r) for r in frows] == rows, f"{where}: read_shard rows differ"
        assert [(e["key"], e["reason"]) for e in fbad if not e.get("unread")] == \
            [(e["key"], e["reason"]) for e in bad], f"{where}: read_shard entries differ"
        assert fstats.samples == fstats.rows + fstats.quarantined == len(frows) + len(fbad) - \
            sum(1 for e in fbad if e.get("unread"))
    result["elapsed"] = elapsed
    return result


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(str(tmp_path_factory.mktemp("fuzz")))


def all_cases(shards: List[Shard]) -> Dict[str, List[Case]]:
    rng = random.Random(SEED)
    out: Dict[str, List[Case]] = {}
    for name, fam in FAMILIES.items():
        out[name] = [c for s in shards for c in fam(s, rng)]
    out["tiny"] = list(fam_tiny(shards, rng))
    return out


@pytest.fixture(scope="module")
def cases(shards):
    return all_cases(shards)


def test_shards_are_what_the_cases_assume(shards):
    by = {s.name: s for s in shards}
    assert [len(s.samples) for s in shards] == [6, 4, 4, 3]
    assert all(m.exts for m in regular(by["wds"]))  # a pax header before every member
    assert {t for m in by["gnu"].members for _, _, t in m.exts} == {b"L", b"K"}
    assert {t for m in by["pax"].members for _, _, t in m.exts} == {b"x"}
    assert sum(s.expected.count(None) for s in shards) == 1  # a02: invalid JSON
    wav = next(m for m in by["wds"].members if m.name == "a03.wav")
    assert ZERO * 2 in by["wds"].raw[wav.header + BLOCK:wav.end]  # silence: zero blocks inside a member
    for s in shards:  # the undamaged shards read as tarfile reads them
        out, stats, _ = run_reader(s.raw)
        assert [row_view(o) for k, o in out if k == "row"] == [r for r in s.expected if r is not None]
        assert stats.quarantined == s.expected.count(None)


def test_at_least_2000_cases(cases):
    counts = {k: len(v) for k, v in cases.items()}
    print("\nfuzz cases per family:", counts, "total", sum(counts.values()))
    assert sum(counts.values()) >= 2000


@pytest.mark.parametrize("family", list(FAMILIES) + ["tiny"])
def test_fuzz(family, cases, tmp_path):
    rng = random.Random(f"{SEED}-{family}")
    t0 = time.perf_counter()
    slowest = (0.0, "")
    for i, case in enumerate(cases[family]):
        # memory traced (slow) for every case that declares sizes, and one case in 3 of the others
        trace = family in ("size", "extended", "tiny") or i % 3 == 0
        res = check_case(case, rng, rerun=i % 4 == 0, via_file=str(tmp_path / "case.tar") if i % 8 == 0 else None,
                         trace=trace)
        if res["elapsed"] > slowest[0]:
            slowest = (res["elapsed"], f"{case.shard.name}: {case.what}")
    took = time.perf_counter() - t0
    n = len(cases[family])
    print(f"\n{family}: {n} cases in {took:.2f} s ({n / took:.0f}/s); slowest read {slowest[0] * 1e3:.1f} ms "
          f"({slowest[1]})")


# ----------------------------------------------------------------------------- what the fuzzer found, pinned


def _read(raw: bytes, tmp_path, name: str = "pinned.tar", **opts):
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(raw)
    rows, bad, stats = [], [], None
    for table, q, stats in read_shard(path, options=ReaderOptions(**opts)):
        rows.extend(table.to_pylist() if table is not None else [])
        bad.extend(q)
    assert stats.samples == stats.rows + stats.quarantined == len(rows) + sum(1 for e in bad if not e.get("unread"))
    return rows, {e["key"]: e["reason"] for e in bad}, stats


def _offsets(raw: bytes, own: bool = False) -> Dict[str, int]:
    """Member name -> offset of its header chain (its first extended header), or of its own header."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        return {ti.name: ti.offset_data - BLOCK if own else ti.offset for ti in tf}


def test_a_lost_member_never_leaves_its_sample_delivered_short(tmp_path):
    """A destroyed header of a sample's last member (k1.json) let k1 be delivered without its
    json, a label lost silently; a shard cut right after k1.flac, likewise. Which sample a lost
    member belonged to cannot be known, so the samples on both sides of the damage are
    quarantined, and the others flow."""
    path = str(tmp_path / "s.tar")
    write_shard(path, [{"__key__": f"k{i}", "flac": flac_bytes(tone(0.02)), "json": b'{"label": 1}'}
                       for i in range(4)])
    raw = open(path, "rb").read()
    h = raw.index(b"k1.json")  # k1.json's own header (after its pax header)
    rows, bad, _ = _read(raw[:h] + b"\xff" * 100 + raw[h + 100:], tmp_path)
    assert [r["key"] for r in rows] == ["k0", "k3"]
    assert bad["k1"].startswith("a corrupt tar region follows this sample (corrupt tar header at byte")
    assert bad["k2"].startswith("a corrupt tar region precedes this sample")
    rows, bad, _ = _read(raw[:_offsets(raw)["k1.json"]], tmp_path)
    assert [r["key"] for r in rows] == ["k0"]
    assert "the readable tar ends inside or after this sample" in bad["k1"]
    assert "without the end-of-archive marker" in bad["k1"]


def test_a_field_that_is_a_link_quarantines_its_sample(tmp_path):
    """k1.json as a symbolic link: k1 was delivered without its json. Links, devices and
    directories with other names (not sample fields) are still ignored."""
    entries = _fields("k0", 0, 0.02) + [("k1.cls", b"1"), ("k1.flac", flac_bytes(tone(0.02))),
                                         ("k1.json", tarfile.SYMTYPE, {"linkname": "../k0.json"}),
                                         ("notes", tarfile.SYMTYPE, {"linkname": "x"}),
                                         ("dir/", tarfile.DIRTYPE, {})] + _fields("k2", 2, 0.02)
    raw = tar_bytes(entries, tarfile.PAX_FORMAT)
    rows, bad, _ = _read(raw, tmp_path)
    assert [r["key"] for r in rows] == ["k0", "k2"]
    assert bad == {"k1": f"k1.json: member at byte {_offsets(raw)['k1.json']} is a symbolic link to '../k0.json', "
                         f"not a regular file; not read"}


def test_inspect_answers_quickly_on_a_10_gb_member_and_a_pax_bomb(tmp_path):
    """A header declaring a 10 GB member, and a pax header declaring 10 GB: inspect answers
    in well under a second, lists the problem with its byte offset, and the samples after the
    lie are still counted."""
    from specstream.io.inspect import inspect_shards

    path = str(tmp_path / "s.tar")
    write_shard(path, [good_sample(f"k{i}", i, seconds=0.05) for i in range(4)])
    raw = open(path, "rb").read()
    member = _offsets(raw, own=True)["k1.flac"]  # k1.flac's own header (after its pax header)
    pax = _offsets(raw)["k2.flac"]  # k2.flac's pax header
    huge = num(10 << 30)
    for what, at in [("member", member), ("pax", pax)]:
        bomb = str(tmp_path / f"bomb-{what}.tar")
        with open(bomb, "wb") as f:
            f.write(set_field(raw, at, 124, huge))
        t0 = time.perf_counter()
        got = inspect_shards(bomb)
        took = time.perf_counter() - t0
        assert took < 1.0, f"{what}: inspect took {took:.2f} s"
        reasons = {e["key"]: e["reason"] for e in got["problems"]}
        if what == "member":
            assert got["samples"] == 4 and got["readable"] == 3
            assert "declares 10737418240 bytes" in reasons["k1"] and f"at byte {member}" in reasons["k1"]
        else:
            assert got["samples"] == 4 + 1 and got["readable"] == 3  # the region is inside k2
            assert f"extended header at byte {pax} declares 10737418240 bytes" in reasons[f"<corrupt:{pax}>"]
            assert reasons["k2"].startswith("sample spans a corrupt tar region")


def _gzip_zeros(mib: int) -> bytes:
    """A gzip stream of ``mib`` MiB of zeros, ~1 KB per MiB (a bomb): gzip members, concatenated."""
    return gzip.compress(bytes(1 << 20), compresslevel=9) * mib


@pytest.mark.parametrize("bomb", ["zeros", "10 GB member", "10 GB pax header"])
def test_gzip_bombs_cost_time_not_memory(bomb, tmp_path):
    """A .tar.gz of 512 MiB of zeros behind a header declaring 10 GB (or nothing, or a pax
    header declaring 10 GB): a few hundred KB on disk. Traced memory stays a few MB (one
    CHUNK at a time, never the declared size); the time is the decompression's."""
    plain = {"zeros": b"", "10 GB member": tar_bytes([("k.flac", b"")], tarfile.USTAR_FORMAT)[:BLOCK],
             "10 GB pax header": tar_bytes([("k.flac", b"")], tarfile.USTAR_FORMAT)[:BLOCK]}[bomb]
    if plain:
        plain = set_field(plain, 0, 124, num(10 << 30))
        if "pax" in bomb:
            plain = set_field(plain, 0, 156, tarfile.XHDTYPE)
    data = (gzip.compress(plain) if plain else b"") + _gzip_zeros(512)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        rows, bad, stats = _read(data, tmp_path, "bomb.tar.gz")
    finally:
        took = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(f"\ngzip bomb ({bomb}): {len(data)} bytes, 512 MiB inflated, {took:.2f} s, traced peak {peak / 1e6:.1f} MB")
    assert stats.compression == "gzip" and not rows
    assert peak < 16 << 20
    if bomb == "zeros":
        assert bad == {} and took < 1.0  # the end-of-archive marker comes first
    elif bomb == "10 GB member":
        assert "is 10737418240 bytes, over the limit" in bad["k"] and "ends inside it" in bad["k"]
    else:
        assert "declares 10737418240 bytes, over the limit of 1048576 bytes" in bad["<corrupt:0>"]
