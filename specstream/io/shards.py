"""Shard addresses: local paths, globs, brace patterns, and pyarrow filesystems (s3://)."""
from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, Iterable, List, Optional, Sequence, Union

import braceexpand

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
            fs, path = storage.filesystem(url)
            if fs is None:
                if os.path.isdir(path):
                    found = sorted(glob.glob(os.path.join(path, "*.tar")))
                elif _has_glob(path):
                    found = sorted(glob.glob(path))
                else:
                    found = [path] if os.path.exists(path) else []
            else:
                found = _remote_matches(fs, url, path)
            if not found:
                raise FileNotFoundError(f"shard pattern {url!r} matches no file")
            urls.extend(found)
    return urls


def _remote_matches(fs, url: str, path: str) -> List[str]:
    from pyarrow import fs as pafs

    prefix = url[: len(url) - len(path)]
    if not _has_glob(path):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [url]
        if info.type == pafs.FileType.Directory:
            sel = pafs.FileSelector(path, recursive=False)
            return sorted(prefix + i.path for i in fs.get_file_info(sel)
                          if i.type == pafs.FileType.File and i.path.endswith(".tar"))
        return []
    # list the deepest directory without glob characters, then match
    parts = path.split("/")
    base_parts: List[str] = []
    for p in parts:
        if _has_glob(p):
            break
        base_parts.append(p)
    base = "/".join(base_parts)
    recursive = len(base_parts) < len(parts) - 1
    sel = pafs.FileSelector(base, recursive=recursive, allow_not_found=True)
    return sorted(prefix + i.path for i in fs.get_file_info(sel)
                  if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path))


def open_shard(url: str, storage: Optional[Storage] = None) -> BinaryIO:
    """A buffered, forward-only binary stream over a shard."""
    storage = storage or Storage()
    fs, path = storage.filesystem(url)
    if fs is None:
        return open(path, "rb", buffering=1 << 20)
    return fs.open_input_stream(path, buffer_size=storage.buffer_size)


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
