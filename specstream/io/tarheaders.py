"""Tar header decoding for the streaming reader (:mod:`.tar`): ustar/GNU/pax header blocks,
numeric fields (octal, base-256; negative sizes are invalid), pax records, and the search
for the next valid header in damaged or mis-sized data. Pure functions on bytes."""
from __future__ import annotations

import re
import tarfile
from typing import Optional, Tuple

import numpy as np

BLOCK = 512
_NAMING = (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME)  # those that can carry the next member's name
_NAMING_SIGNS = (b"PaxHeader", b"@LongLink")  # in the name field of pax / GNU long-name headers
_OCTAL = re.compile(rb"[0-7]*")
_PAX_RECORD = re.compile(rb"(\d{1,20}) ([^=\n]+)=")
_PAX_START = re.compile(rb"\d{1,8} [A-Za-z][\w.]*=")  # a block that starts like pax records


def _nts(b: bytes) -> bytes:
    i = b.find(b"\0")
    return b if i < 0 else b[:i]


def _text(b: bytes) -> str:
    """Name bytes as text: UTF-8, with undecodable bytes written as ``\\xNN`` (a readable,
    stable string that Arrow and JSON accept, unlike surrogate escapes)."""
    return b.decode("utf-8", "backslashreplace")


def _number(b: bytes) -> Optional[int]:
    """A numeric header field (octal, or GNU base-256); None when invalid or negative."""
    if b[0] == 0x80:  # base-256, positive
        return int.from_bytes(b[1:], "big")
    if b[0] == 0xFF:  # base-256, negative: no valid size or checksum is negative
        return None
    s = _nts(b).strip()
    if not _OCTAL.fullmatch(s):
        return None
    return int(s, 8) if s else 0


def _parse_header(buf: bytes) -> Optional[Tuple[str, int, bytes]]:
    """Decode a ustar/pax/GNU header block into (name, size, type); None when the checksum or
    a numeric field is invalid.

    Hand-written rather than ``tarfile.TarInfo.frombuf`` (which builds a full TarInfo per
    member and was the reader's main cost in a profile); the checksum rule is tarfile's: the
    byte sum of the block with the checksum field read as eight spaces, unsigned or signed.
    """
    chk = _number(buf[148:156])
    size = _number(buf[124:136])
    if chk is None or size is None:
        return None
    total = sum(buf) - sum(buf[148:156]) + 256
    if chk != total:
        signed = total - 256 * sum(1 for c in buf[:148] + buf[156:] if c > 127)
        if chk != signed:
            return None
    name = _text(_nts(buf[0:100]))
    htype = buf[156:157]
    if buf[257:263] == b"ustar\0":  # POSIX ustar: name prefix
        prefix = _nts(buf[345:500])
        if prefix:
            name = _text(prefix) + "/" + name
    if htype == tarfile.AREGTYPE and name.endswith("/"):
        htype = tarfile.DIRTYPE  # old tars mark a directory with a trailing slash
    return name, size, htype


def _is_ustar_header(block: bytes) -> bool:
    return block[257:262] == b"ustar" and _parse_header(block) is not None


def _find_header(buf: bytes, end: Optional[int] = None) -> int:
    """Offset of the first block-aligned valid ustar header in ``buf[:end]``, else -1. Only
    the magic bytes of each block are looked at (a strided view), then candidates parsed:
    this runs over every member's data, so it must cost far less than a pass over it."""
    end = len(buf) if end is None else end
    n = end // BLOCK
    if n == 0:
        return -1
    a = np.frombuffer(buf, dtype=np.uint8, count=n * BLOCK).reshape(n, BLOCK)
    hit = a[:, 257] == 0x75  # "ustar"
    for k, c in enumerate(b"star", 258):
        hit &= a[:, k] == c
    for i in np.flatnonzero(hit).tolist():
        b = i * BLOCK
        if _parse_header(buf[b:b + BLOCK]) is not None:
            return b
    return -1


def _names_next(block: bytes) -> bool:
    """Whether a damaged block found where a header was due looks like a pax / GNU long-name
    header, or like the records of one (a header that may have held the next member's name)."""
    return (block[156:157] in _NAMING or any(0 <= block.find(s) < 100 for s in _NAMING_SIGNS)
            or _PAX_START.match(block) is not None)


def _scan(buf: bytes) -> Tuple[int, bool]:
    """(offset of the first valid ustar header in buf or -1, whether a block before it looks
    like a pax / GNU long-name header, or like the records of a pax header)."""
    found = _find_header(buf)
    limit = found if found >= 0 else len(buf)
    naming = any(_PAX_START.match(buf, b) for b in range(0, limit, BLOCK))
    i = buf.find(b"ustar", 257, limit)
    while i >= 0 and not naming:
        b = i - 257
        naming = b % BLOCK == 0 and buf[b + 156:b + 157] in _NAMING
        i = buf.find(b"ustar", i + 1, limit)
    for sign in _NAMING_SIGNS:
        j = buf.find(sign, 0, limit)
        while j >= 0 and not naming:
            naming = j % BLOCK < 100
            j = buf.find(sign, j + 1, limit)
    return found, naming


class _Ext:
    """What the extended headers before a member said about it."""

    __slots__ = ("start", "name", "size", "bad", "named")

    def __init__(self, start: int):
        self.start = start  # offset of the first extended header of the chain
        self.name: Optional[str] = None
        self.size: Optional[int] = None
        self.bad: Optional[str] = None  # why the chain cannot be trusted
        self.named = False  # a pax or GNU long-name header was met


def _pax(data: bytes, ext: _Ext, at: int) -> None:
    """Apply the records of a pax extended header (``"%d %s=%s\\n"``) to ``ext``; malformed
    records, or a path/size that cannot be used, make the chain bad."""
    pos = 0
    n = len(data)
    while pos < n:
        m = _PAX_RECORD.match(data, pos)
        if not m:
            if not data[pos:].strip(b"\0"):
                break  # padding
            ext.bad = f"malformed pax header at byte {at}: no record at its byte {pos}"
            return
        length = int(m.group(1))
        end = pos + length
        if length <= m.end() - pos or end > n or data[end - 1:end] != b"\n":
            ext.bad = (f"malformed pax header at byte {at}: the record at its byte {pos} declares "
                       f"{length} bytes, which do not end with a newline inside the header")
            return
        keyword, value = m.group(2), data[m.end():end - 1]
        if keyword == b"path":
            ext.name = _text(value).rstrip("/")
        elif keyword == b"size":
            if not value.isdigit():
                ext.bad = f"pax header at byte {at}: size record is not a number"
                return
            ext.size = int(value)
        elif keyword.startswith(b"GNU.sparse."):
            ext.bad = f"pax header at byte {at}: GNU sparse file, not supported"
            return
        pos = end
