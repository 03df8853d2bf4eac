"""Compressed shards: gzip (``.tar.gz`` / ``.tgz``), zstd (``.tar.zst``, with the optional
``zstandard`` package), bzip2 and xz, streamed forward with bounded memory.

The format is detected from the first bytes of the object (magic numbers), not from its
name, so a misnamed shard still reads. Decompression never materialises more than one
``read(n)`` worth of output: a "bomb" (a few KB that expand to gigabytes) costs time, not
memory, and the tar reader's member-size limit still applies to what comes out.

Two kinds of failure are kept apart, because they mean different things to the ledger:
a *storage* error raised by the underlying stream (connection lost for good) propagates
as it is (``OSError``); damage in the compressed data itself becomes
:class:`CompressedDataError` with the compressed byte offset where it was found.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from typing import BinaryIO, Optional

MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)
SNIFF_BYTES = 512  # a tar header's worth: enough to tell a tar from compressed data
# names that mark a shard in a directory listing (magic bytes decide the format when read)
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd", ".tar.bz2", ".tar.xz")


class CompressedDataError(ValueError):
    """The compressed stream is damaged (or truncated); nothing after this point decodes."""


def sniff(head: bytes) -> Optional[str]:
    """The compression format whose magic number ``head`` starts with, else None. ``head``
    should be a tar header's worth (512 bytes) when the stream has it: a plain tar whose
    first block is a valid tar header is never taken for compressed data (a member named
    ``BZh...`` starts with bzip2's short magic)."""
    if len(head) >= 512 and _looks_like_tar(head[:512]):
        return None
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    return None


def _looks_like_tar(block: bytes) -> bool:
    from .tarheaders import _parse_header

    return _parse_header(block) is not None


class CountingReader:
    """Forward-only reader over a raw stream that serves ``head`` (already read) first,
    counts the bytes it hands out (``pos``: bytes taken from storage) and remembers the
    last exception the raw stream raised, so a decompressor's error can be told apart
    from a storage failure. Once ``head`` is served, ``read`` is the lean path."""

    def __init__(self, raw: BinaryIO, head: bytes = b""):
        self.raw, self._head = raw, head
        self.pos = 0
        self.failed: Optional[BaseException] = None
        if not head:
            self.read = self._read  # type: ignore[method-assign]

    def read(self, n: int = -1) -> bytes:
        head = self._head
        if n is None or n < 0:
            data = head + self._read(-1)
            self.pos += len(head)
        elif n <= len(head):
            data = head[:n]
            self._head = head[n:]
            self.pos += n
        else:
            data = head + self._read(n - len(head))
            self._head = b""
            self.pos += len(head)
        if not self._head:
            self.read = self._read  # type: ignore[method-assign]
        return data

    def _read(self, n: int = -1) -> bytes:
        try:
            data = self.raw.read(n) if n is not None and n >= 0 else self.raw.read()
        except BaseException as e:
            self.failed = e
            raise
        data = data or b""
        self.pos += len(data)
        return data

    # gzip/bz2/lzma file objects probe these
    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()


class Decompressed:
    """``read(n)`` over the decompressed bytes of a :class:`CountingReader`."""

    def __init__(self, raw: CountingReader, fmt: str):
        self.raw, self.format = raw, fmt
        if fmt == "gzip":
            self._inner = gzip.GzipFile(fileobj=raw, mode="rb")
        elif fmt == "bzip2":
            self._inner = bz2.BZ2File(raw, mode="rb")
        elif fmt == "xz":
            self._inner = lzma.LZMAFile(raw, mode="rb")
        elif fmt == "zstd":
            try:
                import zstandard
            except ImportError:
                raise CompressedDataError("zstd-compressed shard: install the optional 'zstandard' package "
                                          "(pip install zstandard) to read it") from None
            self._inner = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,
                                                                     closefd=False)
        else:
            raise ValueError(f"unknown compression {fmt!r}")

    def read(self, n: int = -1) -> bytes:
        try:
            return self._inner.read(n)
        except Exception as e:  # noqa: BLE001 - classified below
            if self.raw.failed is not None and (e is self.raw.failed or e.__context__ is self.raw.failed):
                raise  # the storage failed, not the data
            raise CompressedDataError(_describe(self.format, e, self.raw.pos)) from None

    def close(self) -> None:
        try:
            self._inner.close()
        except Exception:  # noqa: BLE001 - closing a damaged stream may complain again
            pass
        self.raw.close()


def _describe(fmt: str, e: Exception, pos: int) -> str:
    if isinstance(e, EOFError):
        what = "stream ends before its end-of-stream marker (truncated)"
    else:
        what = str(e).strip() or type(e).__name__
        if isinstance(e, zlib.error):
            what = what.replace("Error -3 while decompressing data: ", "")
    return f"corrupt {fmt} data near compressed byte {pos}: {what}"
