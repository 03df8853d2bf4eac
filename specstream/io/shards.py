"""Shard addresses: local paths, globs, brace patterns, and pyarrow filesystems (s3://)."""
from __future__ import annotations

import fnmatch
import glob
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence, Union

import braceexpand

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
    read_retries: int = 5  # resumes of a failing remote stream at the same byte before giving up
    retry_backoff: float = 0.2  # seconds before the first resume, doubling each time

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
    (``data/*.tar``, ``s3://bucket/train/shard-*.tar``); a directory means every ``.tar``
    in it. Order is kept for explicit lists and brace ranges; glob matches are sorted.
    Raises ``FileNotFoundError`` naming the pattern when it matches nothing.
    """
    storage = storage or Storage()
    items = [spec] if isinstance(spec, str) else list(spec)
    urls: List[str] = []
    for item in items:
        for url in braceexpand.braceexpand(item):
            found = match_url(url, storage, lambda p: p.endswith(".tar"), recursive=False)
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


class ResumableStream:
    """A forward-only stream over an object that survives transient read errors: it keeps
    its byte position and, when a read fails (connection reset, 5xx after the client's own
    retries...), reopens the object and seeks back to that exact position (a ranged GET),
    so no byte is lost and none is read twice. After ``retries`` failures in a row at the
    same position the error is raised (the shard's remainder is then quarantined).

    This is the guard against re-reading a half-consumed stream from its start, which would
    duplicate every sample already emitted from the shard."""

    def __init__(self, fs, path: str, buffer_size: int, retries: int = 5, backoff: float = 0.2):
        self.fs, self.path, self.buffer_size = fs, path, buffer_size
        self.retries, self.backoff = retries, backoff
        self.pos = 0
        self.resumes = 0
        self._s = fs.open_input_stream(path, buffer_size=buffer_size)

    def _reopen(self) -> None:
        import pyarrow as pa

        try:
            self._s.close()
        except Exception:  # noqa: BLE001 - the broken stream may fail to close
            pass
        raw = self.fs.open_input_file(self.path)
        raw.seek(self.pos)
        self._s = pa.BufferedInputStream(raw, self.buffer_size)

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes; all that is left when n is negative or None."""
        failures = 0
        while True:
            try:
                data = self._s.read(n) if n is not None and n >= 0 else self._s.read()
                self.pos += len(data)
                return data
            except OSError as e:
                failures += 1
                if failures > self.retries:
                    raise OSError(f"{self.path}: read failed at byte {self.pos} after {self.retries} "
                                  f"resumes: {e}") from e
                log.warning("%s: read error at byte %d (%s); resuming there (attempt %d)",
                            self.path, self.pos, e, failures)
                time.sleep(self.backoff * 2 ** (failures - 1))
                try:
                    self._reopen()
                    self.resumes += 1
                except OSError:
                    continue

    def close(self) -> None:
        self._s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_shard(url: str, storage: Optional[Storage] = None) -> BinaryIO:
    """A buffered, forward-only binary stream over a shard (remote ones resume after
    transient read errors: :class:`ResumableStream`)."""
    storage = storage or Storage()
    fs, path = storage.filesystem(url)
    if fs is None:
        return open(path, "rb", buffering=1 << 20)
    return ResumableStream(fs, path, storage.buffer_size, storage.read_retries, storage.retry_backoff)


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
