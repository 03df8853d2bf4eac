"""The run's ledger: per-shard counts of samples read, delivered and quarantined.

One small Ray actor per pipeline. Readers record every chunk they emit (idempotently, keyed
by (shard, chunk), so a retried read task does not count twice); stages record quarantine
entries (keyed by (shard, key)); consumers record what they delivered. ``report()``
reconciles: for each shard, read == delivered + quarantined, and the shard was read to its
end. A shard that could not be opened, or was abandoned part-way (the store stayed down past
the retry budget, a damaged compressed stream), has an ``unread`` rest whose sample count is
unknown: it never balances, whatever the counts say.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from typing import Dict, List, Optional

import ray


@ray.remote(num_cpus=0, max_restarts=0)
class Ledger:
    """Counts are kept per read: iterating the dataset again (a new epoch of a Ray Train
    dataset shard) re-reads the shards, and a weighted source's shard may be read several
    times in an epoch. Each read has an id (epoch/task slot/n) and ends with its reader's
    closing record; a retried read task repeats the same ids, which count once. Quarantine
    entries count once per (shard, key, read)."""

    def __init__(self, shards: Optional[List[str]] = None, sizes: Optional[List[Optional[int]]] = None,
                 sources: Optional[Dict[str, str]] = None, fingerprint: str = "", resumed: Optional[dict] = None):
        self._fingerprint = fingerprint  # of the run's config and shards: stream states carry it
        self._resumed = resumed  # the stream state this run resumed from: its later states build on it
        # every shard of the first source: one never read is reported unread (weighted sources are sampled)
        self.expected = list(shards or [])
        self.sizes = dict(zip(self.expected, sizes or []))
        self.source_of = dict(sources or {})  # shard -> source name, with several sources
        self.reads: Dict[str, dict] = {}  # shard -> bytes read/total, compression, unread (latest read)
        self.open: Dict[str, dict] = {}  # read id -> {"shard": ..., "chunks": {chunk: samples}}
        self.closed: set = set()
        self.done_total: Counter = Counter()  # samples of finished reads
        self.passes: Counter = Counter()  # finished reads per shard
        self.bad: Dict[tuple, dict] = {}
        self.delivered: Counter = Counter()
        self.carried: Counter = Counter()  # held by a rank past the common step count, for its next epoch
        self.slot_passes: Counter = Counter()
        self.driven: Optional[int] = None  # the pass the consumers began (TrainStream), when they say
        self.resumes: Counter = Counter()  # transient read errors survived, per shard
        self.assignments: Dict[int, Dict[int, List[str]]] = {}  # pass -> read-task slot -> shards
        self.nodes: Dict[str, set] = {}  # stage -> node ids it ran on
        self.stages: Dict[str, Counter] = {}  # stage -> samples, audio seconds, busy seconds

    def fingerprint(self) -> str:
        return self._fingerprint

    def resumed(self) -> Optional[dict]:
        """The state this run resumed from (epoch, consumed, pending), or None."""
        return self._resumed

    def begin_pass(self, pass_: int) -> None:
        """The consumers (TrainStream, once per rank and epoch) say which pass over the data
        they are starting: read tasks then take that pass, whatever became of the last one
        (an iteration left part-way cancels its read tasks before they finish)."""
        self.driven = pass_ if self.driven is None else max(self.driven, pass_)

    def slot_pass(self, slot: int) -> int:
        """The pass a new read of task ``slot`` belongs to: the one the consumers began, else
        how many passes that slot has finished (a retried read task of the same pass gets the
        same number)."""
        return self.driven if self.driven is not None else self.slot_passes[slot]

    def assign(self, pass_: int, slot: int, shards: List[str], node: str = "") -> None:
        self.assignments.setdefault(pass_, {})[slot] = list(shards)
        if node:
            self.nodes.setdefault("read", set()).add(node)

    def slot_done(self, slot: int) -> None:
        self.slot_passes[slot] += 1

    def record_node(self, stage: str, node: str) -> None:
        self.nodes.setdefault(stage, set()).add(node)

    def record_read(self, read_id: str, shard: str, chunk: int, samples: int, entries: List[dict], done: bool,
                    resumes: int = 0, info: Optional[dict] = None) -> None:
        """One chunk of a read. The closing record (``done``) carries ``info``: bytes read and
        total, compression, ``unread`` (from_byte, reason) when the shard was not read to its
        end, ``sampled`` when a weighted source's read was stopped on purpose, ``pending`` for a
        resumed run's re-read of an earlier epoch's held samples: that read is no pass over the
        shard, and what it passed over was consumed in that earlier epoch (not ``skipped`` by this
        run); only an unread rest or a corrupt end it met is kept in the shard's figures."""
        if read_id in self.closed:
            return  # a retried read task repeating a read that already finished
        self.open.setdefault(read_id, {"shard": shard, "chunks": {}})["chunks"][chunk] = samples
        self.quarantine(entries)
        if resumes:
            self.resumes[shard] += resumes
        pending = info is not None and bool(info.get("pending"))
        if pending:
            kept = {k: info[k] for k in ("unread", "corrupt") if info.get(k)}
            if kept:
                self.reads[shard] = {**self.reads.get(shard, {"bytes_read": None, "bytes_total": None}), **kept}
            info = None
        if info is not None:
            prev = self.reads.get(shard)
            # an unread rest in any read stays reported (a later clean read does not hide it)
            if prev is not None:
                info = {**info, **{k: prev[k] for k in ("unread", "corrupt") if prev.get(k) and not info.get(k)}}
                info["skipped"] = (info.get("skipped") or 0) + (prev.get("skipped") or 0)  # over every read
            self.reads[shard] = info
        if done:
            self.done_total[shard] += sum(self.open.pop(read_id)["chunks"].values())
            if not pending:
                self.passes[shard] += 1
            self.closed.add(read_id)

    def record_reads(self, records: List[tuple]) -> None:
        """Several :meth:`record_read` calls in one (a read task's :class:`LedgerClient`), in order."""
        for r in records:
            self.record_read(*r)

    def quarantine(self, entries: List[dict]) -> None:
        for e in entries:
            self.bad.setdefault((e["shard"], e["key"], e.get("read", self.passes[e["shard"]])), e)

    def record_stage(self, stage: str, samples: int, audio_s: float, busy_s: float) -> None:
        """Work a stage did: ``samples`` (and ``audio_s`` seconds of audio) in ``busy_s`` seconds
        of one worker's time (summed over every worker and call)."""
        c = self.stages.setdefault(stage, Counter())
        c["samples"] += samples
        c["audio_s"] += audio_s
        c["busy_s"] += busy_s

    def record_delivered(self, counts: Dict[str, int]) -> None:
        self.delivered.update(counts)

    def record_carried(self, counts: Dict[str, int]) -> None:
        """Change the rows carried over per shard (positive: held back; negative: delivered later)."""
        for shard, n in counts.items():
            self.carried[shard] += n

    def report(self) -> dict:
        read = Counter(self.done_total)
        for r in self.open.values():
            read[r["shard"]] += sum(r["chunks"].values())
        reads = dict(self.reads)
        for shard in self.expected:
            if shard not in read and shard not in reads:
                reads[shard] = {"bytes_read": 0, "bytes_total": self.sizes.get(shard), "never": True}
        report = build_report(dict(read), dict(self.passes), list(self.bad.values()), dict(self.delivered),
                              reads=reads, in_progress={r["shard"] for r in self.open.values()},
                              carried=dict(self.carried), sources=self.source_of)
        report["nodes"] = {stage: sorted(n) for stage, n in self.nodes.items()}
        report["stages"] = stage_table(self.stages)
        for shard, n in self.resumes.items():
            if shard in report["shards"]:
                report["shards"][shard]["resumes"] = n
        if self.resumes:
            report["totals"]["resumes"] = sum(self.resumes.values())
        report["shard_order"] = {str(p): [u for i in sorted(a) for u in a[i]]
                                 for p, a in sorted(self.assignments.items())}
        return report


def stage_table(stages: Dict[str, Counter]) -> Dict[str, dict]:
    """Per stage: samples, audio hours, busy seconds (one worker's time, summed over workers)
    and audio hours per busy second (what one worker of the stage sustains). The read stage
    does not decode, so its audio is its samples at the decode stage's mean clip duration."""
    mean = None
    dec = stages.get("decode")
    if dec and dec["samples"]:
        mean = dec["audio_s"] / dec["samples"]
    out = {}
    for stage in ("read", "decode", "featurize"):
        c = stages.get(stage)
        if not c:
            continue
        audio = c["audio_s"] if c["audio_s"] or mean is None else c["samples"] * mean
        out[stage] = {"samples": int(c["samples"]), "audio_hours": round(audio / 3600, 6),
                      "busy_s": round(c["busy_s"], 3),
                      "audio_hours_per_busy_s": round(audio / 3600 / c["busy_s"], 6) if c["busy_s"] else None}
    return out


def build_report(read: Dict[str, int], passes: Dict[str, int], quarantine: List[dict],
                 delivered: Dict[str, int], reads: Optional[Dict[str, dict]] = None,
                 in_progress: frozenset = frozenset(), carried: Optional[Dict[str, int]] = None,
                 sources: Optional[Dict[str, str]] = None) -> dict:
    """Per-shard reconciliation plus totals and the quarantine list (one entry per
    (shard, key); counts include every pass).

    Per shard: ``read``, ``delivered``, ``quarantined``, ``carried`` samples (held by a rank
    past the epoch's common step count, delivered in its next epoch), ``passes``, ``bytes_read``
    of ``bytes_total``, ``unread`` (null, or where the unread rest starts and why: its
    sample count is unknown) and ``balanced`` = the counts reconcile and nothing is unread
    or still being read, and a compressed shard's end checksum (when read to its end) held
    (``corrupt`` says otherwise). Totals add ``shards_corrupt``, ``shards_unread`` and ``bytes_unread`` (of the shards
    whose size is known)."""
    reads = reads or {}
    carried = carried or {}
    counted = [e for e in quarantine if not e.get("unread")]
    q_by_shard: Counter = Counter(e["shard"] for e in counted)
    shards = {}
    for shard in sorted(set(read) | set(delivered) | set(q_by_shard) | set(reads) | set(carried)):
        r, d, q, c = read.get(shard, 0), delivered.get(shard, 0), q_by_shard.get(shard, 0), carried.get(shard, 0)
        info = reads.get(shard)
        unread = None
        if info is not None and info.get("unread"):
            unread = dict(info["unread"])
        elif shard not in read and info is not None and info.get("never"):
            unread = {"from_byte": 0, "reason": "never read: the run ended before this shard was opened"}
        row = {"read": r, "delivered": d, "quarantined": q, "carried": c, "passes": passes.get(shard, 0),
               "bytes_read": (info or {}).get("bytes_read"), "bytes_total": (info or {}).get("bytes_total"),
               "unread": unread}
        if (info or {}).get("compression"):
            row["compression"] = info["compression"]
        if (info or {}).get("corrupt"):
            row["corrupt"] = info["corrupt"]
        if (info or {}).get("skipped"):
            row["skipped"] = info["skipped"]  # consumed before a resume: passed over, not read
        if (info or {}).get("sampled"):
            row["sampled"] = True  # a weighted source: its last read stopped when the epoch's share was taken
        if sources and shard in sources:
            row["source"] = sources[shard]
        if shard in in_progress:
            row["reading"] = True  # a read of this shard has started and not finished
        row["balanced"] = r == d + q + c and unread is None and not row.get("corrupt") and shard not in in_progress
        shards[shard] = row
    totals = {k: sum(s[k] for s in shards.values()) for k in ("read", "delivered", "quarantined", "carried")}
    totals["shards"] = len(shards)
    unread_rows = [s for s in shards.values() if s["unread"] is not None]
    totals["shards_unread"] = len(unread_rows)
    totals["bytes_unread"] = sum(s["bytes_total"] - (s["unread"].get("from_byte") or 0)
                                 for s in unread_rows if s["bytes_total"] is not None)
    totals["shards_corrupt"] = sum(1 for s in shards.values() if s.get("corrupt"))
    totals["skipped"] = sum(s.get("skipped", 0) for s in shards.values())
    totals["balanced"] = all(s["balanced"] for s in shards.values())
    unique = {(e["shard"], e["key"]): {k: v for k, v in e.items() if k != "read"} for e in quarantine}
    report = {"totals": totals, "shards": shards,
              "quarantine": sorted(unique.values(), key=lambda e: (e["shard"], str(e["key"])))}
    if sources and len(set(sources.values())) > 1:
        per: Dict[str, Counter] = {}
        for shard, row in shards.items():
            c = per.setdefault(row.get("source", "?"), Counter())
            c.update({k: row[k] for k in ("read", "delivered", "quarantined", "carried")})
            c["shards_read"] += 1 if row["passes"] or row["read"] else 0
        report["sources"] = {name: dict(c) for name, c in sorted(per.items())}
    return report


class LedgerClient:
    """A read task's records to the ledger, batched and asynchronous: records are buffered and
    sent as one ``record_reads`` call once ``max_records`` have gathered or ``interval_s``
    has passed since the last send, with at most one call in flight (the next waits only
    when ``max_buffer`` records are waiting: back-pressure on a ledger that falls behind).
    Order is kept. ``flush()`` sends the rest and waits: a read task calls it before it
    ends, so a finished task's reads are all in the ledger; one whose consumer stopped early
    sends what it holds (``send_rest``), so rows it emitted are counted as read. A task that
    dies loses what it had buffered, which is what its retry re-sends (records are keyed by
    read id and chunk, so repeats count once). ``ledger`` None: records go nowhere."""

    def __init__(self, ledger, max_records: int = 64, interval_s: float = 0.5, max_buffer: int = 4096):
        self.ledger = ledger
        self.max_records, self.interval_s, self.max_buffer = max_records, interval_s, max_buffer
        self.buffer: List[tuple] = []
        self.pending = None
        self.next_size = max_records  # the buffer size at which to try to send next
        self.next_time = time.monotonic() + interval_s  # ... or the time
        self.calls = 0

    def record(self, *record) -> None:
        if self.ledger is None:
            return
        self.buffer.append(record)
        if len(self.buffer) >= self.next_size or time.monotonic() >= self.next_time:
            self._send(wait=len(self.buffer) >= self.max_buffer)

    def _send(self, wait: bool) -> None:
        # the next try comes after another max_records records or interval_s: polling the call
        # in flight on every record would cost the task more than the records themselves
        self.next_size = len(self.buffer) + self.max_records
        self.next_time = time.monotonic() + self.interval_s
        if self.pending is not None:
            ready, _ = ray.wait([self.pending], timeout=None if wait else 0)
            if not ready:
                return  # one call in flight: keep buffering
            ray.get(self.pending)  # raises if the ledger failed
            self.pending = None
        if self.buffer:
            self.pending = self.ledger.record_reads.remote(self.buffer)
            self.buffer = []
            self.calls += 1
            self.next_size = self.max_records

    def send_rest(self) -> None:
        """Send what is buffered without waiting (a read task leaving early: its consumer
        stopped). Calls from one task reach the actor in order, after the one in flight."""
        if self.ledger is not None and self.buffer:
            self.ledger.record_reads.remote(self.buffer)
            self.buffer = []
            self.calls += 1

    def flush(self) -> None:
        """Send everything buffered and wait until the ledger has it."""
        if self.ledger is None:
            return
        self._send(wait=True)  # waits for the call in flight, then sends the rest
        if self.pending is not None:
            ray.get(self.pending)
            self.pending = None


class LedgerSink:
    """Picklable sink for stages: quarantine entries (blocks until the ledger has them, so a
    report taken after the stream ends is complete) and the stage's work figures (sent
    without waiting: they are statistics, not accounting)."""

    def __init__(self, ledger):
        self.ledger = ledger

    def __call__(self, entries: List[dict]) -> None:
        if entries:
            ray.get(self.ledger.quarantine.remote(entries))

    def stats(self, stage: str, samples: int, audio_s: float, busy_s: float) -> None:
        self.ledger.record_stage.remote(stage, samples, audio_s, busy_s)


class DeliveryCounter:
    """Counts delivered rows per shard on the consumer side and flushes them to a ledger."""

    def __init__(self, ledger=None, flush_every: int = 50):
        self.ledger = ledger
        self.flush_every = flush_every
        self.total: Counter = Counter()
        self._pending: Counter = Counter()
        self._batches = 0

    def add(self, shards) -> None:
        c = Counter(shards)
        self.total.update(c)
        self._pending.update(c)
        self._batches += 1
        if self.ledger is not None and self._batches % self.flush_every == 0:
            self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        if self.ledger is None or not self._pending:
            return
        ref = self.ledger.record_delivered.remote(dict(self._pending))
        self._pending = Counter()
        if wait:
            ray.get(ref)


def write_report(report: dict, path: Optional[str]) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
