"""Shard addresses: local paths, globs, brace patterns, and pyarrow filesystems (s3://)."""
from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence, Union

import braceexpand

from .compress import SHARD_SUFFIXES

log = logging.getLogger(__name__)
_GLOB_CHARS = set("*?[")
# pyarrow S3 streams crawl without an explicit read buffer (see ../shared/anchors.md).
DEFAULT_BUFFER = 8 << 20


@dataclass
class Storage:
    """How to reach non-local shards. Credentials come only from the standard environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE...)."""

    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    buffer_size: int = DEFAULT_BUFFER
    options: Dict[str, Any] = field(default_factory=dict)  # extra pyarrow S3FileSystem kwargs
    retry_budget_s: float = 60.0  # how long failures in a row (open or read) are retried
    retry_backoff: float = 0.2  # seconds before the first retry, doubling each time...
    retry_backoff_max: float = 5.0  # ...up to this
    read_retries: Optional[int] = None  # an optional cap on attempts in a row, besides the time budget

    def filesystem(self, url: str):
        """(pyarrow filesystem, path inside it) for a URL, or (None, local path)."""
        scheme, sep, rest = url.partition("://")
        if not sep or scheme == "file":
            return None, rest if sep else url
        if scheme == "s3":
            from pyarrow import fs as pafs

            kw = dict(self.options)
            if self.endpoint_url:
                ep = self.endpoint_url
                if "://" in ep:
                    kw.setdefault("scheme", ep.split("://", 1)[0])
                    ep = ep.split("://", 1)[1]
                kw["endpoint_override"] = ep
            if self.region:
                kw["region"] = self.region
            return pafs.S3FileSystem(**kw), rest
        from pyarrow import fs as pafs

        fs, path = pafs.FileSystem.from_uri(url)
        return fs, path


def _has_glob(s: str) -> bool:
    return any(c in _GLOB_CHARS for c in s)


def expand_shards(spec: Union[str, Sequence[str]], storage: Optional[Storage] = None) -> List[str]:
    """Expand a shard spec (a string or a list of them) into a list of shard URLs.

    Each string may hold brace patterns (``shard-{000000..000099}.tar``) and globs
    (``data/*.tar``, ``s3://bucket/train/shard-*.tar``); a directory means every shard in it
    (``.tar``, and the compressed ``.tar.gz``, ``.tgz``, ``.tar.zst``, ``.tar.bz2``, ``.tar.xz``). Order is kept for explicit lists and brace ranges; glob matches are sorted.
    Raises ``FileNotFoundError`` naming the pattern when it matches nothing.
    """
    storage = storage or Storage()
    items = [spec] if isinstance(spec, str) else list(spec)
    urls: List[str] = []
    for item in items:
        for url in braceexpand.braceexpand(item):
            try:
                found = match_url(url, storage, lambda p: p.endswith(SHARD_SUFFIXES), recursive=False)
            except FileNotFoundError:
                raise
            except OSError as e:
                if "://" not in url:
                    raise
                if is_auth_error(e):
                    raise StorageAccessError(storage_message(e, url)) from None
                raise OSError(f"cannot list {redact(url)}: {storage_message(e, url)}") from None
            if not found:
                raise FileNotFoundError(f"shard pattern {url!r} matches no file")
            urls.extend(found)
    return urls


def match_url(url: str, storage: Storage, in_dir: Callable[[str], bool], recursive: bool) -> List[str]:
    """The files one URL (no braces) names: itself if a file; the files of a directory that
    ``in_dir`` accepts (its subdirectories too when ``recursive``); a glob's matches, sorted."""
    fs, path = storage.filesystem(url)
    if fs is None:
        if os.path.isdir(path):
            if recursive:
                items = [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
            else:
                items = [e.path for e in os.scandir(path) if e.is_file() and not e.name.startswith(".")]
            return sorted(p for p in items if in_dir(p))
        if _has_glob(path):
            return sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
        return [path] if os.path.isfile(path) else []
    return _remote_matches(fs, url, path, in_dir, recursive)


def _remote_matches(fs, url: str, path: str, in_dir: Callable[[str], bool], recursive: bool) -> List[str]:
    from pyarrow import fs as pafs

    prefix = url[: len(url) - len(path)]
    if not _has_glob(path):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [url]
        if info.type == pafs.FileType.Directory:
            sel = pafs.FileSelector(path, recursive=recursive)
            return sorted(prefix + i.path for i in fs.get_file_info(sel)
                          if i.type == pafs.FileType.File and in_dir(i.path))
        return []
    # list the deepest directory without glob characters, then match
    parts = path.split("/")
    base_parts: List[str] = []
    for p in parts:
        if _has_glob(p):
            break
        base_parts.append(p)
    base = "/".join(base_parts)
    deep = len(base_parts) < len(parts) - 1
    sel = pafs.FileSelector(base, recursive=deep, allow_not_found=True)
    return sorted(prefix + i.path for i in fs.get_file_info(sel)
                  if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path))


class StorageAccessError(PermissionError):
    """The store refused access (403/401: wrong or expired credentials, no permission).
    Not retried: the message names the bucket and key, never a credential."""


class ShardUnreadable(OSError):
    """A remote shard could not be opened or read within the retry budget."""


_AUTH_MARKERS = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                 "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID", "EXPIRED_TOKEN", "UNRECOGNIZED_CLIENT",
                 "ExpiredToken", "TokenRefreshRequired", "InvalidToken", "HTTP response code: 403",
                 "HTTP response code: 401", "403 Forbidden")


def is_auth_error(e: BaseException) -> bool:
    msg = str(e)
    return isinstance(e, PermissionError) or any(m in msg for m in _AUTH_MARKERS)


_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with credential values of this process's environment and URL user-info
    (``scheme://user:pass@host``) replaced by ``***``: applied to every storage message
    that reaches a log, a quarantine reason or a report."""
    for var in _SECRET_VARS:
        v = os.environ.get(var)
        if v and len(v) >= 4:
            text = text.replace(v, "***")
    return _USERINFO.sub("***@", text)


_REQUEST_ID = re.compile(r"\s*\((?:Request|Host) ID: [^)]*\)", re.I)
_AFTER_MS = re.compile(r" after \d+ ms")


def storage_message(e: BaseException, url: str) -> str:
    """A one-line, credential-free description of a storage error on ``url``, the same on
    every run (request ids and timings left out)."""
    msg = _AFTER_MS.sub("", _REQUEST_ID.sub("", " ".join(str(e).split()))) or type(e).__name__
    if "://" in url and is_auth_error(e):
        bucket, _, key = url.split("://", 1)[-1].partition("/")
        msg = (f"access denied to bucket {bucket!r} key {key!r}: check the credentials (AWS_* variables "
               f"or profile) of every Ray worker and their permissions ({msg})")
    return redact(msg)


class ResumableStream:
    """A forward-only stream over an object that survives outages of the store.

    It keeps its byte position. Opening the object and every read are retried: on a
    failure (connection refused or reset, a 5xx or 503 SlowDown after the client's own
    retries, a timeout) it waits (exponential backoff from ``backoff`` seconds, capped at
    ``backoff_max``), reopens the object and seeks back to that exact position (a ranged
    GET), so no byte is lost and none is read twice. It gives up when failures in a row
    have lasted ``budget_s`` seconds (a time budget: long enough for a server restart), or
    after ``max_retries`` attempts when that is set, raising :class:`ShardUnreadable`; the
    shard's unread rest is then accounted for as unread. Access denied (403/401) is not
    retried: :class:`StorageAccessError` names bucket and key. An object reported missing
    (404, e.g. deleted after listing) is retried for ``missing_budget_s`` only.

    Opening is lazy (the first read opens), so an outage at open time is retried like
    one mid-shard. This is also the guard against re-reading a half-consumed stream from
    its start, which would duplicate every sample already emitted from the shard."""

    missing_budget_s = 5.0  # an object reported missing (404) is retried this long at most

    def __init__(self, fs, path: str, buffer_size: int, budget_s: float = 60.0, backoff: float = 0.2,
                 backoff_max: float = 5.0, max_retries: Optional[int] = None, url: Optional[str] = None):
        self.fs, self.path, self.buffer_size = fs, path, buffer_size
        self.budget_s, self.backoff, self.backoff_max, self.max_retries = budget_s, backoff, backoff_max, max_retries
        self.url = url or path
        self.pos = 0
        self.resumes = 0  # successful reopens after a failure
        self._s = None

    def _open(self):
        import pyarrow as pa

        if self.pos == 0:  # compression=None: the bytes as stored (ShardStream detects compression itself)
            return self.fs.open_input_stream(self.path, compression=None, buffer_size=self.buffer_size)
        raw = self.fs.open_input_file(self.path)
        raw.seek(self.pos)
        return pa.BufferedInputStream(raw, self.buffer_size)

    def _drop(self) -> None:
        if self._s is not None:
            try:
                self._s.close()
            except Exception:  # noqa: BLE001 - the broken stream may fail to close
                pass
            self._s = None

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes; all that is left when n is negative or None."""
        first_failure = None
        attempts = 0
        while True:
            try:
                if self._s is None:
                    self._s = self._open()
                    if attempts:
                        self.resumes += 1
                data = self._s.read(n) if n is not None and n >= 0 else self._s.read()
                self.pos += len(data)
                return data
            except (OSError, ValueError) as e:  # ValueError: an operation on a stream closed under us
                self._drop()
                if is_auth_error(e):
                    raise StorageAccessError(storage_message(e, self.url)) from None
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                attempts += 1
                waited = now - first_failure
                # an object that is gone (404 while the store answers) gets a short budget of its own
                budget = min(self.budget_s, self.missing_budget_s) if isinstance(e, FileNotFoundError) \
                    else self.budget_s
                if waited >= budget or (self.max_retries is not None and attempts > self.max_retries):
                    what = "not found" if isinstance(e, FileNotFoundError) else "failed"
                    raise ShardUnreadable(
                        f"{'open' if self.pos == 0 else 'read'} {what} at byte {self.pos} past the retry budget "
                        f"(source.retry_budget_s = {self.budget_s:g}): {storage_message(e, self.url)}") from None
                delay = min(self.backoff_max, self.backoff * 2 ** (attempts - 1), max(0.0, budget - waited))
                log.warning("%s: %s error at byte %d (%s); retrying there in %.2f s (attempt %d)",
                            redact(self.url), "open" if self.pos == 0 else "read", self.pos,
                            storage_message(e, self.url), delay, attempts)
                time.sleep(delay)

    def close(self) -> None:
        self._drop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ShardStream:
    """What the tar reader reads: a shard's bytes, decompressed when the object starts with
    a gzip / zstd / bzip2 / xz magic number. ``raw_pos`` counts the bytes taken from
    storage, ``size`` is the object's size when known, ``compression`` the detected format
    (None for a plain tar), ``resumes`` the transient errors survived."""

    def __init__(self, raw: BinaryIO, size: Optional[int] = None):
        from .compress import SNIFF_BYTES, CountingReader, Decompressed, sniff

        self._storage = raw
        self.size = size
        self.tail_error: Optional[BaseException] = None  # set by the tar reader past the end marker
        head = _read_upto(raw, SNIFF_BYTES)
        self._raw = CountingReader(raw, head)
        self.compression = sniff(head)
        self._s = Decompressed(self._raw, self.compression) if self.compression else self._raw
        self.read = self._s.read  # no extra call layer per read

    @property
    def raw_pos(self) -> int:
        return self._raw.pos

    @property
    def resumes(self) -> int:
        return getattr(self._storage, "resumes", 0)

    def read(self, n: int = -1) -> bytes:  # replaced per instance by the inner stream's read
        return self._s.read(n)

    def verify_end(self, limit: int = 16 << 20) -> Optional[str]:
        """After the tar's end-of-archive marker: read a compressed stream to its end (at most
        ``limit`` more decompressed bytes) so that its checksum (gzip CRC-32, zstd/xz
        checks) is verified. Returns the damage found, else None; a storage failure raises
        (OSError). The tar reader stops at the end-of-archive marker, before the trailer that
        holds the checksum. Data after a complete compressed stream that is not another
        stream is reported as such, not as a checksum failure."""
        from .compress import CompressedDataError

        if self.tail_error is not None:
            e, self.tail_error = self.tail_error, None
            if isinstance(e, CompressedDataError):
                return None if _trailing_data(e) else str(e)
            raise e
        if not self.compression:
            return None
        left = limit
        try:
            while left > 0:
                chunk = self._s.read(min(left, 1 << 20))
                if not chunk:
                    return None
                left -= len(chunk)
        except CompressedDataError as e:
            return None if _trailing_data(e) else str(e)
        return None

    def close(self) -> None:
        self._s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _trailing_data(e: BaseException) -> bool:
    """gzip's complaint about bytes after a complete stream that are not another gzip member
    (the stream itself, checksum included, was whole): not damage to the shard."""
    return "Not a gzipped file" in str(e)


def _read_upto(raw: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = raw.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def open_shard(url: str, storage: Optional[Storage] = None, size: Optional[int] = None) -> ShardStream:
    """A buffered, forward-only binary stream over a shard's tar bytes: remote objects
    resume after transient errors and outages (:class:`ResumableStream`), compressed
    shards are decompressed as they stream (:class:`ShardStream`). Raises ``OSError`` when
    the shard cannot be opened (remote: after the retry budget)."""
    storage = storage or Storage()
    fs, path = storage.filesystem(url)
    if fs is None:
        raw = open(path, "rb", buffering=1 << 20)
        size = os.fstat(raw.fileno()).st_size if size is None else size
    else:
        raw = ResumableStream(fs, path, storage.buffer_size, storage.retry_budget_s, storage.retry_backoff,
                              storage.retry_backoff_max, storage.read_retries, url=url)
    try:
        return ShardStream(raw, size)
    except BaseException:
        raw.close()
        raise


def shard_sizes(urls: Iterable[str], storage: Optional[Storage] = None) -> List[Optional[int]]:
    """Byte sizes of shards (None where unknown); used for read-task size estimates."""
    storage = storage or Storage()
    out: List[Optional[int]] = []
    for url in urls:
        fs, path = storage.filesystem(url)
        try:
            out.append(os.path.getsize(path) if fs is None else fs.get_file_info(path).size)
        except OSError:
            out.append(None)
    return out
