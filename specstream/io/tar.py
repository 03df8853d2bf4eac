"""Streaming tar member iterator that survives damage.

Why not ``tarfile``'s stream mode (which ``webdataset.tar_file_iterator`` wraps)? When
``tarfile`` meets a corrupt header mid-stream it stops the iteration for good, so every
sample after the damage is lost. This reader parses the 512-byte ustar/pax/GNU headers
itself, reads only
forward from any file-like object with ``read(n)`` (local files, pyarrow S3 streams), and:

- on a corrupt header, scans forward block by block to the next valid header and reports
  the skipped byte range, so the members after the damage still flow;
- on a truncated archive, reports the member that was cut and stops;
- checks the member size against a limit *before* reading its data, and skips (without
  buffering) a member over the limit.

It yields :class:`Member` (a complete regular file) or :class:`Problem` (something that
could not be read, with the member name when it is known). Memory use is one member.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator, NamedTuple, Optional, Tuple, Union

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_SKIP_CHUNK = 1 << 20
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE)


class Member(NamedTuple):
    name: str
    offset: int  # byte offset of the member's header in the archive
    data: bytes


@dataclass(frozen=True)
class Problem:
    offset: int
    reason: str
    name: Optional[str] = None  # member name, when the header could be read
    fatal: bool = False  # True when nothing after this point can be read


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Read up to n bytes, looping over short reads; fewer than n only at end of stream."""
    data = stream.read(n)
    if data is None:
        data = b""
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _skip(stream: BinaryIO, n: int) -> int:
    """Discard n bytes from a forward-only stream; returns how many were skipped."""
    skipped = 0
    while skipped < n:
        chunk = stream.read(min(_SKIP_CHUNK, n - skipped))
        if not chunk:
            break
        skipped += len(chunk)
    return skipped


def _nts(b: bytes) -> str:
    i = b.find(b"\0")
    return (b if i < 0 else b[:i]).decode("utf-8", "surrogateescape")


def _octal(b: bytes) -> int:
    if b[0] & 0x80:  # GNU base-256 encoding of large sizes
        n = b[0] & 0x7F
        for c in b[1:]:
            n = (n << 8) | c
        return n
    i = b.find(b"\0")
    s = (b if i < 0 else b[:i]).strip()
    return int(s, 8) if s else 0


def _parse_header(buf: bytes) -> Optional[Tuple[str, int, bytes]]:
    """Decode a ustar/pax/GNU header block into (name, size, type); None when the
    checksum or a numeric field is invalid.

    Hand-written rather than ``tarfile.TarInfo.frombuf`` (which builds a full TarInfo per
    member and was the reader's main cost in a profile); the checksum rule is the standard one:
    the unsigned byte sum of the block with the checksum field read as eight spaces.
    """
    try:
        chk = _octal(buf[148:156])
        size = _octal(buf[124:136])
    except ValueError:
        return None
    if chk != sum(buf) - sum(buf[148:156]) + 256:
        return None
    name = _nts(buf[0:100])
    if buf[257:263] == b"ustar\0":  # POSIX ustar: name prefix
        prefix = _nts(buf[345:500])
        if prefix:
            name = prefix + "/" + name
    return name, size, buf[156:157]


def _pax_path(data: bytes) -> Optional[str]:
    """The ``path`` record of a pax extended header, if any ("%d %s=%s\\n" records)."""
    pos = 0
    path = None
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            break
        if length <= 0:
            break
        record = data[sp + 1 : pos + length - 1]
        kw, _, value = record.partition(b"=")
        if kw == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def iter_members(
    stream: BinaryIO, max_member_bytes: Optional[int] = None
) -> Iterator[Union[Member, Problem]]:
    """Yield the regular-file members of a tar stream, and the problems met on the way."""
    offset = 0
    long_name: Optional[str] = None
    resync_from: Optional[int] = None  # start of a corrupt region being skipped
    while True:
        buf = _read_exact(stream, BLOCK)
        if len(buf) < BLOCK:
            if resync_from is not None:
                yield Problem(resync_from, f"corrupt tar data from byte {resync_from} to the end "
                              f"({offset + len(buf) - resync_from} bytes, no valid header found)",
                              fatal=True)
            elif buf:
                yield Problem(offset, f"truncated tar: partial header at byte {offset}", fatal=True)
            # A stream that ends on a member boundary without the end-of-archive blocks
            # lost nothing that can be known; it is not reported as a sample problem.
            return
        if buf == _ZERO_BLOCK:
            if resync_from is not None:
                offset += BLOCK
                continue
            return  # end-of-archive marker
        info = _parse_header(buf)
        if info is not None and resync_from is not None and buf[257:262] != b"ustar":
            info = None  # while resyncing, accept only ustar headers: fewer false positives
        if info is None:
            if resync_from is None:
                resync_from = offset
            offset += BLOCK
            continue
        if resync_from is not None:
            yield Problem(resync_from, f"corrupt tar header at byte {resync_from}; skipped "
                          f"{offset - resync_from} bytes to the next valid header at byte {offset}")
            resync_from = None
            long_name = None
        header_offset = offset
        offset += BLOCK
        hname, size, htype = info
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        name = long_name if long_name is not None else hname
        if htype in _EXTENDED:
            data = _read_exact(stream, padded)
            offset += len(data)
            if len(data) < padded:
                yield Problem(header_offset, f"truncated tar inside an extended header at byte "
                              f"{header_offset}", fatal=True)
                return
            if htype == tarfile.GNUTYPE_LONGNAME:
                long_name = data[:size].rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif htype == tarfile.XHDTYPE:
                long_name = _pax_path(data[:size]) or long_name
            continue
        long_name = None
        if htype not in _REGULAR:
            skipped = _skip(stream, padded)
            offset += skipped
            if skipped < padded:
                yield Problem(header_offset, "truncated tar inside a non-file member", name, fatal=True)
                return
            continue
        if max_member_bytes is not None and size > max_member_bytes:
            skipped = _skip(stream, padded)
            offset += skipped
            yield Problem(header_offset, f"member is {size} bytes, over the limit of "
                          f"{max_member_bytes} bytes; not read", name, fatal=skipped < padded)
            if skipped < padded:
                return
            continue
        data = _read_exact(stream, size)
        offset += len(data)
        if len(data) < size:
            yield Problem(header_offset, f"truncated tar: member has {len(data)} of {size} bytes",
                          name, fatal=True)
            return
        pad = padded - size
        if pad:
            offset += len(_read_exact(stream, pad))
        yield Member(name, header_offset, data)
