"""WebDataset shard -> samples (whitelisted fields only) + quarantine entries -> Arrow blocks.

A sample is the run of consecutive tar members that share a key (webdataset's
``base_plus_ext`` split: ``dir/key.ext``). Only whitelisted fields are kept, each as bytes or
text: audio bytes (decoded later, by the decode stage) and the text fields ``json``,
``cls``, ``txt``. Nothing is ever unpickled or ``torch.load``-ed; other fields are counted
and ignored.

Every sample the shard holds ends as exactly one of: a row of an Arrow block, or a
quarantine entry ``{shard, key, stage, reason}``. A corrupt stretch of the tar with no
readable member names becomes one entry with a ``<corrupt:START-END>`` key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple, Union

import pyarrow as pa
from webdataset.tariterators import base_plus_ext

from .shards import Storage, open_shard
from .tar import Member, Problem, iter_members

AUDIO_EXTS = ("flac", "wav", "mp3", "ogg", "opus", "aiff", "aif", "au")
TEXT_FIELDS = ("cls", "txt", "json")

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("shard", pa.string()),
    ("audio", pa.large_binary()),
    ("audio_format", pa.string()),
    ("cls", pa.string()),
    ("txt", pa.string()),
    ("json", pa.string()),
])


@dataclass
class ReaderOptions:
    audio_exts: Tuple[str, ...] = AUDIO_EXTS
    max_member_bytes: int = 256 << 20
    block_rows: int = 256
    block_bytes: int = 64 << 20


@dataclass
class ShardStats:
    shard: str
    samples: int = 0  # samples (and corrupt regions) met: rows + quarantined
    rows: int = 0
    quarantined: int = 0
    bytes_read: int = 0
    resumes: int = 0  # transient read errors survived by resuming at the same byte
    ignored_fields: Dict[str, int] = field(default_factory=dict)


def quarantine_entry(shard: str, key: str, stage: str, reason: str) -> dict:
    return {"shard": shard, "key": key, "stage": stage, "reason": reason}


class _Pending:
    __slots__ = ("key", "fields", "problem")

    def __init__(self, key: str):
        self.key = key
        self.fields: Dict[str, bytes] = {}
        self.problem: Optional[str] = None


def iter_samples(stream, shard: str, options: Optional[ReaderOptions] = None,
                 stats: Optional[ShardStats] = None) -> Iterator[Union[dict, Tuple[str, dict]]]:
    """Yield ``("row", row_dict)`` or ``("quarantine", entry)`` for every sample in a stream."""
    options = options or ReaderOptions()
    stats = stats if stats is not None else ShardStats(shard)
    audio_exts = set(options.audio_exts)
    seen_keys = set()
    cur: Optional[_Pending] = None

    def finish(p: _Pending):
        stats.samples += 1
        if p.key in seen_keys:
            p.problem = p.problem or "duplicate key: another sample in this shard has this key"
        seen_keys.add(p.key)
        if p.problem is None:
            row, reason = _build_row(p, shard, options.audio_exts)
            if row is not None:
                stats.rows += 1
                return "row", row
            p.problem = reason
        stats.quarantined += 1
        return "quarantine", quarantine_entry(shard, p.key, "read", p.problem)

    region: Optional[str] = None  # reason of a corrupt region just met, if any
    members = iter_members(stream, options.max_member_bytes)
    while True:
        try:
            item = next(members)
        except StopIteration:
            break
        except OSError as e:
            # the storage failed for good (a remote stream has already resumed and retried):
            # the sample in progress may be incomplete, the rest of the shard is unread
            if cur is not None:
                cur.problem = cur.problem or f"read failed inside this sample: {e}"
                yield finish(cur)
            stats.samples += 1
            stats.quarantined += 1
            yield "quarantine", quarantine_entry(shard, f"<unread:{getattr(stream, 'pos', '?')}>", "read",
                                                 f"read failed; the rest of the shard was not read: {e}")
            return
        if isinstance(item, Problem):
            if item.name is None:
                # A stretch with no readable member names: one entry for the region. The
                # sample in progress stays open: if it goes on after the region, the region
                # split it and it is quarantined; if not, it is judged on what it holds.
                stats.samples += 1
                stats.quarantined += 1
                yield "quarantine", quarantine_entry(shard, f"<corrupt:{item.offset}>", "read", item.reason)
                if item.fatal:
                    if cur is not None:
                        yield finish(cur)
                    return
                region = item.reason
                continue
            key, _ = base_plus_ext(item.name)
            key = key if key is not None else item.name
            if cur is None or cur.key != key:
                if cur is not None:
                    yield finish(cur)
                cur = _Pending(key)
            region = None
            cur.problem = cur.problem or f"{item.name}: {item.reason}"
            if item.fatal:
                yield finish(cur)
                return
            continue
        assert isinstance(item, Member)
        stats.bytes_read += len(item.data)
        key, ext = base_plus_ext(item.name)
        if key is None:
            stats.ignored_fields["<no extension>"] = stats.ignored_fields.get("<no extension>", 0) + 1
            continue
        base = key.rsplit("/", 1)[-1]
        if base.startswith("__") and base.endswith("__"):
            continue  # webdataset metadata members
        ext = ext.lower()
        if region is not None and cur is not None and cur.key == key:
            cur.problem = cur.problem or f"sample spans a corrupt tar region ({region})"
        region = None
        if cur is None or cur.key != key:
            if cur is not None:
                yield finish(cur)
            cur = _Pending(key)
        if ext in audio_exts or ext in TEXT_FIELDS:
            if ext in cur.fields:
                cur.problem = cur.problem or f"duplicate member {item.name!r} in one sample"
            cur.fields[ext] = item.data
        else:
            stats.ignored_fields[ext] = stats.ignored_fields.get(ext, 0) + 1
    if cur is not None:
        yield finish(cur)


def _build_row(p: _Pending, shard: str, audio_exts) -> Tuple[Optional[dict], Optional[str]]:
    audio_fmt = next((e for e in audio_exts if e in p.fields), None)
    if audio_fmt is None:
        present = ", ".join(sorted(p.fields)) or "none"
        return None, f"no audio member (fields present: {present})"
    row = {"key": p.key, "shard": shard, "audio": p.fields[audio_fmt], "audio_format": audio_fmt,
           "cls": None, "txt": None, "json": None}
    for name in TEXT_FIELDS:
        raw = p.fields.get(name)
        if raw is None:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"{name}: not UTF-8 text ({e.reason} at byte {e.start})"
        if name == "json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                return None, f"json: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})"
            if not isinstance(obj, dict):
                return None, f"json: expected an object, got {type(obj).__name__}"
        row[name] = text.strip() if name == "cls" else text
    return row, None


def rows_to_table(rows: List[dict]) -> pa.Table:
    cols = {name: [r[name] for r in rows] for name in SCHEMA.names}
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def read_shard(url: str, storage: Optional[Storage] = None, options: Optional[ReaderOptions] = None,
               ) -> Iterator[Tuple[Optional[pa.Table], List[dict], ShardStats]]:
    """Stream a shard as ``(table or None, quarantine entries, running stats)`` chunks.

    A chunk is emitted when ``block_rows`` rows or ``block_bytes`` audio bytes have gathered,
    and at the end of the shard; the stats object is the same one, updated as it goes. A
    shard that cannot be opened at all yields one quarantine entry with key ``<shard>``.
    """
    options = options or ReaderOptions()
    stats = ShardStats(url)
    try:
        stream = open_shard(url, storage)
    except Exception as e:  # noqa: BLE001 - any open failure is reported, not raised
        stats.samples += 1
        stats.quarantined += 1
        yield None, [quarantine_entry(url, "<shard>", "read", f"cannot open shard: {type(e).__name__}: {e}")], stats
        return
    rows: List[dict] = []
    bad: List[dict] = []
    nbytes = 0
    try:
        for kind, obj in iter_samples(stream, url, options, stats):
            if kind == "row":
                rows.append(obj)
                nbytes += len(obj["audio"])
                if len(rows) >= options.block_rows or nbytes >= options.block_bytes:
                    yield rows_to_table(rows), bad, stats
                    rows, bad, nbytes = [], [], 0
            else:
                bad.append(obj)
    finally:
        stats.resumes = getattr(stream, "resumes", 0)
        stream.close()
    if rows or bad:
        yield (rows_to_table(rows) if rows else None), bad, stats
