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
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple, Union

import pyarrow as pa
from webdataset.tariterators import base_plus_ext

from ..resume import contains
from .compress import CompressedDataError
from .shards import Storage, StorageAccessError, open_shard, redact, storage_message
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
    ("index", pa.int64()),  # the sample's ordinal in its shard (counted on the headers: stable across reads)
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
    samples: int = 0  # samples (and corrupt regions) met: rows + quarantined (skipped ones not counted)
    position: int = 0  # samples named so far (the next one's index), skipped ones included
    skipped: int = 0  # samples passed over unparsed because a resumed run had consumed them
    rows: int = 0
    quarantined: int = 0
    bytes_read: int = 0  # bytes taken from storage (compressed bytes for a compressed shard)
    bytes_total: Optional[int] = None  # the object's size, when known
    compression: Optional[str] = None  # gzip, zstd, bzip2, xz; None for a plain tar
    resumes: int = 0  # transient read errors survived by resuming at the same byte
    # set when the shard was not read to its end (it could not be opened, the store stayed down
    # past the retry budget, or the compressed stream is damaged): how many samples the unread
    # rest held is unknown, so the shard cannot balance
    unread: Optional[dict] = None  # {"from_byte": int, "reason": str}
    # set when a compressed shard's checksum fails at its end: bytes already delivered from it
    # may be corrupt (tar itself has no data checksum), so the shard cannot balance
    corrupt: Optional[str] = None
    ignored_fields: Dict[str, int] = field(default_factory=dict)


_REPR = re.compile(r"<([A-Za-z_][\w.]*) object at 0x[0-9a-fA-F]+>")


def clean_reason(reason: str) -> str:
    """One line, no object reprs (``<_io.BytesIO object at 0x7f...>`` becomes ``<BytesIO>``),
    no credentials: a reason that reads well and is the same on every run."""
    reason = _REPR.sub(lambda m: "<" + m.group(1).rsplit(".", 1)[-1] + ">", reason)
    return redact(" ".join(reason.split()))


def quarantine_entry(shard: str, key: str, stage: str, reason: str) -> dict:
    return {"shard": shard, "key": key, "stage": stage, "reason": clean_reason(reason)}


def unread_entry(shard: str, from_byte: int, reason: str) -> dict:
    """The quarantine-list entry for a shard's unread rest: listed with the samples, but not
    a sample (its count is unknown): ``unread: True`` keeps it out of the sample counts."""
    e = quarantine_entry(shard, f"<unread:{from_byte}>", "read", reason)
    e["unread"] = True
    return e


class _Pending:
    __slots__ = ("key", "fields", "problem")

    def __init__(self, key: str):
        self.key = key
        self.fields: Dict[str, bytes] = {}
        self.problem: Optional[str] = None


def iter_samples(stream, shard: str, options: Optional[ReaderOptions] = None,
                 stats: Optional[ShardStats] = None, skip=None) -> Iterator[Union[dict, Tuple[str, dict]]]:
    """Yield ``("row", row_dict)`` or ``("quarantine", entry)`` for every sample in a stream
    (and ``("skip", None)`` for a sample whose index is in ``skip``, sorted [start, end)
    ranges: one a resumed run had consumed, passed over without parsing its fields)."""
    options = options or ReaderOptions()
    stats = stats if stats is not None else ShardStats(shard)
    audio_exts = set(options.audio_exts)
    seen_keys = set()
    cur: Optional[_Pending] = None

    def finish(p: _Pending):
        index = stats.position
        stats.position += 1
        if skip and contains(skip, index):
            stats.skipped += 1
            return "skip", None
        stats.samples += 1
        if p.key in seen_keys:
            p.problem = p.problem or "duplicate key: another sample in this shard has this key"
        seen_keys.add(p.key)
        if p.problem is None:
            row, reason = _build_row(p, shard, options.audio_exts)
            if row is not None:
                row["index"] = index
                stats.rows += 1
                return "row", row
            p.problem = reason
        stats.quarantined += 1
        return "quarantine", quarantine_entry(shard, p.key, "read", p.problem)

    region: Optional[str] = None  # reason of a corrupt region just met, if any

    def start(key: str):
        """Make ``cur`` the sample ``key`` belongs to, finishing the previous one; a region met
        just before taints the samples on both sides of it."""
        nonlocal cur, region
        if region is not None and cur is not None:
            cur.problem = cur.problem or (
                f"sample spans a corrupt tar region ({region})" if cur.key == key else
                f"a corrupt tar region follows this sample ({region}); a member of it may be lost")
        if cur is None or cur.key != key:
            if cur is not None:
                yield finish(cur)
            cur = _Pending(key)
            if region is not None:
                cur.problem = f"a corrupt tar region precedes this sample ({region}); a member of it may be lost"
        region = None

    members = iter_members(stream, options.max_member_bytes)
    while True:
        try:
            item = next(members)
        except StopIteration:
            break
        except StorageAccessError:
            raise  # wrong or expired credentials: a clear error, not a quarantine entry
        except (OSError, CompressedDataError) as e:
            # The storage failed for good (a remote stream has already retried for its whole
            # budget) or the compressed stream is damaged: the sample in progress may be
            # incomplete and the rest of the shard is unread (how many samples it held is unknown).
            pos = getattr(stream, "raw_pos", None)
            pos = getattr(stream, "pos", 0) if pos is None else pos
            if cur is not None:
                cur.problem = cur.problem or f"the shard could not be read past this sample: {e}"
                yield finish(cur)
            what = "storage error" if isinstance(e, OSError) else "damaged compressed stream"
            stats.unread = {"from_byte": int(pos),
                            "reason": clean_reason(f"{what}; the rest of the shard was not read: {e}")}
            yield "quarantine", unread_entry(shard, int(pos), stats.unread["reason"])
            return
        if isinstance(item, Problem):
            if item.name is None:
                # A stretch with no readable member names: one entry for the region. Which
                # sample the lost members belonged to cannot be known, so the sample in
                # progress and the sample after the region are both quarantined (unless they
                # are one sample, which the region split): none is delivered with a member
                # silently missing.
                stats.samples += 1
                stats.quarantined += 1
                yield "quarantine", quarantine_entry(shard, f"<corrupt:{item.offset}>", "read", item.reason)
                if item.fatal:
                    if cur is not None:
                        cur.problem = cur.problem or (
                            f"the readable tar ends inside or after this sample ({item.reason})")
                        yield finish(cur)
                    return
                region = item.reason
                continue
            key, ext = base_plus_ext(item.name)
            if item.not_a_file and (key is None or not (ext.lower() in audio_exts or ext.lower() in TEXT_FIELDS)):
                continue  # a link, directory...: a problem only where a sample field of that name is missing
            key = key if key is not None else item.name
            yield from start(key)
            cur.problem = cur.problem or f"{item.name}: {item.reason}"
            if item.fatal:
                yield finish(cur)
                return
            continue
        assert isinstance(item, Member)
        key, ext = base_plus_ext(item.name)
        if key is None:
            stats.ignored_fields["<no extension>"] = stats.ignored_fields.get("<no extension>", 0) + 1
            continue
        base = key.rsplit("/", 1)[-1]
        if base.startswith("__") and base.endswith("__"):
            continue  # webdataset metadata members
        ext = ext.lower()
        yield from start(key)
        if ext in audio_exts or ext in TEXT_FIELDS:
            if ext in cur.fields:
                cur.problem = cur.problem or f"duplicate member {item.name!r} in one sample"
            cur.fields[ext] = item.data
        else:
            stats.ignored_fields[ext] = stats.ignored_fields.get(ext, 0) + 1
    if cur is not None:
        if region is not None:
            cur.problem = cur.problem or (
                f"a corrupt tar region follows this sample ({region}); a member of it may be lost")
        yield finish(cur)
    verify = getattr(stream, "verify_end", None)
    try:
        damage = verify() if verify is not None else None
    except StorageAccessError:
        raise
    except OSError as e:  # the store failed while the end of a compressed stream was read
        pos = getattr(stream, "raw_pos", 0)
        stats.unread = {"from_byte": int(pos), "reason": clean_reason(
            f"storage error at the end of the compressed stream (its checksum was not verified): {e}")}
        yield "quarantine", unread_entry(shard, int(pos), stats.unread["reason"])
        return
    if damage:
        stats.corrupt = clean_reason(f"{damage}: the checksum at the end of the compressed stream does not "
                                     f"match; samples delivered from this shard may be corrupt")
        e = quarantine_entry(shard, "<checksum>", "read", stats.corrupt)
        e["unread"] = True  # a shard-level entry, not a sample
        yield "quarantine", e


def _build_row(p: _Pending, shard: str, audio_exts) -> Tuple[Optional[dict], Optional[str]]:
    audio_fmt = next((e for e in audio_exts if e in p.fields), None)
    if audio_fmt is None:
        present = ", ".join(sorted(p.fields)) or "none"
        return None, f"no audio member (fields present: {present})"
    row = {"key": p.key, "shard": shard, "audio": p.fields[audio_fmt], "audio_format": audio_fmt,
           "cls": None, "txt": None, "json": None, "index": None}
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
               size: Optional[int] = None, skip=None, until: Optional[int] = None
               ) -> Iterator[Tuple[Optional[pa.Table], List[dict], ShardStats]]:
    """Stream a shard (plain or compressed tar) as ``(table or None, quarantine entries,
    running stats)`` chunks.

    A chunk is emitted when ``block_rows`` rows or ``block_bytes`` audio bytes have gathered,
    and at the end of the shard; the stats object is the same one, updated as it goes. A
    shard that cannot be opened, or is abandoned part-way, sets ``stats.unread`` and yields
    an ``unread`` entry (``<unread:N>``) that is not counted as a sample.
    Access denied (403) raises :class:`~specstream.io.shards.StorageAccessError`.
    ``size``: the object's size when the caller knows it (else it is looked up for local
    files only). ``skip``: sorted [start, end) ranges of sample indices to pass over (a
    resumed run's consumed samples): their members are read past, not parsed or emitted.
    ``until``: stop once the samples before that index have been met (a resumed run reading
    again only some samples of a shard); the rest of the shard is not read.
    """
    options = options or ReaderOptions()
    stats = ShardStats(url, bytes_total=size)
    try:
        stream = open_shard(url, storage, size)
    except StorageAccessError:
        raise
    except Exception as e:  # noqa: BLE001 - any other open failure is reported, not raised
        msg = storage_message(e, url) if isinstance(e, OSError) else str(e)
        stats.unread = {"from_byte": 0, "reason": clean_reason(f"cannot open shard: {msg}")}
        yield None, [unread_entry(url, 0, stats.unread["reason"])], stats
        return
    stats.bytes_total = stream.size if stats.bytes_total is None else stats.bytes_total
    stats.compression = stream.compression
    rows: List[dict] = []
    bad: List[dict] = []
    nbytes = 0
    chunks = 0
    try:
        for kind, obj in iter_samples(stream, url, options, stats, skip=skip):
            if kind == "skip":
                if until is not None and stats.position >= until:
                    break
                continue
            if kind == "row":
                rows.append(obj)
                nbytes += len(obj["audio"])
                if len(rows) >= options.block_rows or nbytes >= options.block_bytes:
                    stats.bytes_read = stream.raw_pos
                    chunks += 1
                    yield rows_to_table(rows), bad, stats
                    rows, bad, nbytes = [], [], 0
            else:
                bad.append(obj)
            if until is not None and stats.position >= until:
                break
    finally:
        stats.resumes = stream.resumes
        stats.bytes_read = stream.raw_pos
        stream.close()
    if rows or bad or not chunks:  # the last chunk carries the final stats (even of an empty shard)
        yield (rows_to_table(rows) if rows else None), bad, stats
