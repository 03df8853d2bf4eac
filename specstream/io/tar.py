"""Streaming tar member iterator that survives damage.

Why not ``tarfile``'s stream mode (which ``webdataset.tar_file_iterator`` wraps)? When
``tarfile`` meets a corrupt header mid-stream it stops the iteration for good, so every
sample after the damage is lost. This reader parses the 512-byte ustar/pax/GNU headers
itself, reads only forward from any file-like object with ``read(n)`` (local files,
pyarrow S3 streams, decompressed streams), and:

- on a corrupt header, or zero blocks inside the archive (also past an end-of-archive
  marker, up to ``_TAIL_SCAN`` bytes: a wrong size can land in a WAV's silence), scans
  forward to the next valid ustar header and reports the skipped byte range, so the members
  after the damage still flow. When the damaged stretch may have held the pax / GNU
  long-name header of the member right after it, that member's name cannot be trusted, and
  it is skipped with the stretch;
- on a truncated archive, reports the member that was cut and stops; an archive that ends
  without its end-of-archive marker is reported too (what followed the cut is unknowable);
- never trusts a declared size: no ``read()`` asks for more than ``CHUNK`` bytes (a header
  declaring 10 GB costs what the stream really holds, not 10 GB of memory); a member over
  ``max_member_bytes`` is skipped without buffering; a pax / GNU long-name header over
  ``MAX_EXTENDED`` bytes, malformed pax records, or two headers naming one member make the
  member they describe damage; negative sizes make a header invalid;
- notices a wrong size field: a valid tar header at a block boundary inside a member's bytes
  (unless the member is itself a tar) means the size is wrong; the member is reported and
  reading goes on from that header, so the members it would swallow still flow;
- reports links, devices, FIFOs, directories and other non-files as ``not_a_file``
  problems (the sample reader ignores them unless they carry a sample field's name).

It yields :class:`Member` (a complete regular file) or :class:`Problem` (something that
could not be read, with the member name when it is known). Memory use is one member (at most
``max_member_bytes``) plus one ``CHUNK``. Reasons are one line of plain text with byte
offsets, the same on every run; names that are not UTF-8 read as ``\\xNN``.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator, NamedTuple, Optional, Tuple, Union

from .tarheaders import (BLOCK, _NAMING, _Ext, _find_header, _is_ustar_header, _names_next, _nts, _parse_header,
                         _pax, _scan, _text)

CHUNK = 1 << 20  # the most the reader asks of the stream in one read()
MAX_EXTENDED = 1 << 20  # a pax / GNU long-name header over this many bytes is damage
_SCAN_CHUNK = 64 << 10  # read size while scanning a damaged stretch for the next header
_TAIL_SCAN = 64 << 10  # how far past an end-of-archive marker the reader looks for more members
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
# links, devices, FIFOs and directories have no data blocks, whatever their size field says
# (as in tarfile; POSIX: "no data logical records are stored" for them)
_NO_DATA = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
            tarfile.FIFOTYPE)
# headers describing the member after them: GNU long name / long link, pax extended, pax global
_EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE)
_KINDS = {tarfile.LNKTYPE: "hard link", tarfile.SYMTYPE: "symbolic link", tarfile.CHRTYPE: "character device",
          tarfile.BLKTYPE: "block device", tarfile.DIRTYPE: "directory", tarfile.FIFOTYPE: "FIFO",
          tarfile.GNUTYPE_SPARSE: "GNU sparse file"}
_EXT_KINDS = {tarfile.GNUTYPE_LONGNAME: "GNU long-name", tarfile.GNUTYPE_LONGLINK: "GNU long-link",
              tarfile.XHDTYPE: "pax", tarfile.XGLTYPE: "pax global"}


class Member(NamedTuple):
    name: str
    offset: int  # byte offset of the member's own header in the archive
    data: bytes


@dataclass(frozen=True)
class Problem:
    offset: int
    reason: str
    name: Optional[str] = None  # member name, when the header could be read
    fatal: bool = False  # True when nothing after this point can be read
    # a link, device, FIFO, directory...: not damage, but a sample field by that name is missing
    not_a_file: bool = False


class _Input:
    """The stream, read forward in bounded requests, with push-back and a byte offset."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.offset = 0  # archive offset of the next byte read() returns
        self._back = b""
        self._back_pos = 0

    def read(self, n: int) -> bytes:
        """Exactly n bytes, fewer only at the end of the stream; never asks the stream for more
        than CHUNK bytes at once (a declared size is never allocated blindly)."""
        if self._back_pos >= len(self._back) and n <= CHUNK:  # the common case: one read
            data = self.stream.read(n) or b""
            if len(data) == n or not data:
                self.offset += len(data)
                return data
            parts = [data]
            got = len(data)
        else:
            parts = []
            got = 0
        if self._back_pos < len(self._back):
            part = self._back[self._back_pos:self._back_pos + n]
            self._back_pos += len(part)
            parts.append(part)
            got = len(part)
        while got < n:
            part = self.stream.read(min(CHUNK, n - got))
            if not part:
                break
            parts.append(part)
            got += len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.offset += len(data)
        return data

    def unread(self, data: bytes) -> None:
        if data:
            self._back = data + self._back[self._back_pos:]
            self._back_pos = 0
            self.offset -= len(data)


def _take(inp: _Input, size: int, keep: bool, nested: bool = True) -> Tuple[Optional[bytes], int, int]:
    """Read (``keep``) or skip a member's ``size`` data bytes and their padding.

    Returns (data or None, got, header): ``got`` < ``size`` when the stream ended inside the
    member; ``header`` >= 0 when a valid tar header sits at that offset inside the member's
    blocks (its size field is wrong): everything from that header on is pushed back. A
    member whose first block is itself a tar header (a tar inside the tar) is not searched,
    unless ``nested`` is False (extended headers: their data is never a tar).
    """
    padded = (size + BLOCK - 1) // BLOCK * BLOCK
    if keep:
        data = inp.read(size)
        pad = inp.read(padded - size) if len(data) == size else b""
        got = len(data)
        if not (nested and got >= BLOCK and _is_ustar_header(data[:BLOCK])):
            full = got // BLOCK * BLOCK
            q = _find_header(data, full)
            if q < 0 and got % BLOCK:
                tail = data[full:] + pad
                if len(tail) == BLOCK and _is_ustar_header(tail):
                    q = full
            if q >= 0:
                inp.unread(data[q:] + pad)
                return None, got, q
        return data, got, -1
    done = 0
    while done < padded:
        want = min(CHUNK, padded - done)
        chunk = inp.read(want)
        if done == 0:
            nested = nested and len(chunk) >= BLOCK and _is_ustar_header(chunk[:BLOCK])
        if not nested:
            q = _find_header(chunk)
            if q >= 0:
                inp.unread(chunk[q:])
                return None, min(size, done + q), done + q
        done += len(chunk)
        if len(chunk) < want:
            break
    return None, min(size, done), -1


def iter_members(
    stream: BinaryIO, max_member_bytes: Optional[int] = None
) -> Iterator[Union[Member, Problem]]:
    """Yield the regular-file members of a tar stream, and the problems met on the way
    (see the module docstring). Problems with ``name=None`` are damaged stretches whose
    members cannot be named; a ``fatal`` problem is the last item."""
    inp = _Input(stream)
    ext: Optional[_Ext] = None
    while True:
        off = inp.offset
        buf = inp.read(BLOCK)
        if len(buf) < BLOCK:
            if ext is not None:
                yield Problem(ext.start, f"truncated tar: the shard ends at byte {off}, after an extended "
                              f"header at byte {ext.start}; the member it describes is missing", fatal=True)
            elif buf and not buf.strip(b"\0"):
                pass  # cut inside the end-of-archive marker: nothing lost
            elif buf:
                yield Problem(off, f"truncated tar: partial header at byte {off} ({len(buf)} of {BLOCK} bytes)",
                              fatal=True)
            elif off == 0:
                yield Problem(0, "empty shard: no tar data at all (0 bytes)", fatal=True)
            else:
                yield Problem(off, f"truncated tar: the shard ends at byte {off} without the end-of-archive "
                              f"marker; members after that point, if any, are lost", fatal=True)
            return
        info = None
        if buf == _ZERO_BLOCK:
            nxt = inp.read(BLOCK)
            if nxt == _ZERO_BLOCK or (len(nxt) < BLOCK and not nxt.strip(b"\0")):
                # the end-of-archive marker, unless members follow it: a look past it catches
                # a wrong size that landed in zeros (silence in a WAV), or shards joined together
                try:
                    tail = inp.read(_TAIL_SCAN) if len(nxt) == BLOCK else b""
                except Exception as e:  # noqa: BLE001 - past the marker, a failed read is just the end
                    tail = b""  # of the members; the error is kept for the stream's owner (a compressed
                    try:  # stream's checksum check, ShardStream.verify_end, reports it)
                        inp.stream.tail_error = e
                    except AttributeError:
                        pass
                if _find_header(tail) < 0:
                    if ext is not None:
                        yield Problem(ext.start, f"extended header at byte {ext.start} is followed by the "
                                      f"end-of-archive marker; the member it describes is missing")
                    return
                inp.unread(nxt + tail)
                what, why = f"end-of-archive marker at byte {off}", " followed by more members (a wrong " \
                    "size before it, or archives joined together)"
            else:
                inp.unread(nxt)
                what, why = f"zero block at byte {off}", " inside the archive (a destroyed header, or a wrong " \
                    "size before it)"
        else:
            info = _parse_header(buf)
            what, why = f"corrupt tar header at byte {off}", ""
        if info is None:
            # a damaged stretch: scan for the next valid ustar header
            start = off if ext is None else ext.start
            what += why + ("" if ext is None else f", after the extended header at byte {ext.start}")
            ext = None
            naming = _names_next(buf)
            found = -1
            while True:
                base = inp.offset
                chunk = inp.read(_SCAN_CHUNK)
                found, seen = _scan(chunk)
                naming = naming or seen
                if found >= 0:
                    inp.unread(chunk[found:])
                    found += base
                    break
                if len(chunk) < _SCAN_CHUNK:
                    break
            if found < 0:
                yield Problem(start, f"{what}; no valid header in the {inp.offset - start} bytes from there "
                              f"to the end of the shard", fatal=True)
                return
            head = inp.read(BLOCK)
            hname, hsize, htype = _parse_header(head)
            # The member right after the stretch: if the stretch may have held its extended
            # header (pax path, GNU long name), its own header may hold a stand-in for its
            # name: cut to fit (a full 100-byte name field, or a ustar prefix/name split) or
            # with "?" for each non-ASCII character (pax writers). Its name is then unreliable:
            # it is skipped with the stretch.
            suspect = htype not in _EXTENDED and (
                naming or head[99] != 0 or "?" in hname or (head[257:263] == b"ustar\0" and head[345] != 0))
            if not suspect:
                inp.unread(head)
                yield Problem(start, f"{what}; skipped {found - start} bytes to the next valid header at "
                              f"byte {found}")
                continue
            _, got, hdr = _take(inp, 0 if htype in _NO_DATA else hsize, keep=False)
            cut = hdr < 0 and got < (0 if htype in _NO_DATA else hsize)
            yield Problem(start, f"{what}; skipped {found - start} bytes to the next valid header at byte "
                          f"{found}, and the member there (header name {hname!r}), whose real name may have "
                          f"been in the damaged stretch" + ("; the shard ends inside it" if cut else ""),
                          fatal=cut)
            if cut:
                return
            continue
        hname, size, htype = info
        if htype in _EXTENDED:
            if ext is None:
                if htype != tarfile.XGLTYPE:
                    ext = _Ext(off)
            elif ext.bad is None and (htype == tarfile.XGLTYPE or (htype in _NAMING and ext.named)):
                # two headers naming one member, or a global header inside a chain: which name
                # is meant cannot be told (tarfile and GNU tar disagree), so the chain is bad
                ext.bad = f"malformed tar: a second {_EXT_KINDS[htype]} header at byte {off} in the header chain " \
                          f"starting at byte {ext.start}"
            if ext is not None and htype in _NAMING:
                ext.named = True
            if size > MAX_EXTENDED:
                _, got, hdr = _take(inp, size, keep=False, nested=False)
                reason = (f"extended header at byte {off} declares {size} bytes, over the limit of "
                          f"{MAX_EXTENDED} bytes")
                if hdr < 0 and got < size:
                    yield Problem(off if ext is None else ext.start, f"{reason}, and the shard ends inside it",
                                  fatal=True)
                    return
                if ext is not None:
                    ext.bad = reason
                continue
            data = inp.read((size + BLOCK - 1) // BLOCK * BLOCK)[:size]  # (size <= MAX_EXTENDED)
            if len(data) < size:
                yield Problem(off if ext is None else ext.start, f"truncated tar: the shard ends at byte "
                              f"{inp.offset}, inside the extended header at byte {off}", fatal=True)
                return
            if htype == tarfile.XGLTYPE:  # ignored; named like a sample field, it is that field missing
                if ext is None:
                    yield Problem(off, f"member at byte {off} is a pax global header, not a regular file; "
                                  f"not read", hname, not_a_file=True)
                continue  # (inside a chain it made the chain bad: reported with the member after it)
            if ext.bad is not None:
                continue
            if htype == tarfile.GNUTYPE_LONGNAME:
                ext.name = _text(_nts(data))
            elif htype == tarfile.XHDTYPE:
                _pax(data, ext, off)
            continue
        chain = off if ext is None else ext.start
        name = hname if ext is None or ext.name is None else ext.name
        if ext is not None and ext.size is not None:
            size = ext.size
        bad = None if ext is None else ext.bad
        ext = None
        if bad is not None:
            # the extended header before this member is damaged: its name (and maybe its size)
            # cannot be trusted, so it is skipped, as part of the damage
            _, got, hdr = _take(inp, 0 if htype in _NO_DATA else size, keep=False)
            cut = hdr < 0 and got < (0 if htype in _NO_DATA else size)
            yield Problem(chain, f"{bad}; the member it describes (header name {hname!r} at byte {off}) "
                          f"was skipped" + ("; the shard ends inside it" if cut else ""), fatal=cut)
            if cut:
                return
            continue
        if htype not in _REGULAR:
            kind = _KINDS.get(htype) or f"member of unknown type {htype.decode('latin-1')!r}"
            target = _text(_nts(buf[157:257]))
            if htype in (tarfile.LNKTYPE, tarfile.SYMTYPE) and target:
                kind += f" to {target!r}"
            if htype in _NO_DATA:
                yield Problem(off, f"member at byte {off} is a {kind}, not a regular file; not read", name,
                              not_a_file=True)
                continue
            _, got, hdr = _take(inp, size, keep=False)
            if hdr < 0 and got < size:
                yield Problem(off, f"truncated tar: the shard ends inside the {kind} at byte {off}", name,
                              fatal=True)
                return
            if hdr >= 0:
                yield Problem(off, f"{kind} at byte {off} declares {size} bytes, but a tar header follows at "
                              f"byte {off + BLOCK + hdr}: its size field is wrong", name)
            else:
                yield Problem(off, f"member at byte {off} is a {kind}, not a regular file; not read", name,
                              not_a_file=True)
            continue
        if max_member_bytes is not None and size > max_member_bytes:
            _, got, hdr = _take(inp, size, keep=False)
            if hdr >= 0:
                yield Problem(off, f"member at byte {off} declares {size} bytes (over the limit of "
                              f"{max_member_bytes} bytes), but a tar header follows at byte "
                              f"{off + BLOCK + hdr}: its size field is wrong; not read", name)
            elif got < size:
                yield Problem(off, f"member at byte {off} is {size} bytes, over the limit of {max_member_bytes} "
                              f"bytes, and the shard ends inside it ({got} bytes present); not read", name,
                              fatal=True)
                return
            else:
                yield Problem(off, f"member at byte {off} is {size} bytes, over the limit of "
                              f"{max_member_bytes} bytes; not read", name)
            continue
        data, got, hdr = _take(inp, size, keep=True)
        if hdr >= 0:
            yield Problem(off, f"member at byte {off} declares {size} bytes, but a tar header follows at "
                          f"byte {off + BLOCK + hdr}: its size field is wrong; not read", name)
            continue
        if got < size:
            yield Problem(off, f"truncated tar: member at byte {off} has {got} of {size} bytes", name, fatal=True)
            return
        yield Member(name, off, data)
