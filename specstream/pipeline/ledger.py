"""The run's ledger: per-shard counts of samples read, delivered and quarantined.

One small Ray actor per pipeline. Readers record every chunk they emit (idempotently, keyed
by (shard, chunk), so a retried read task does not count twice); stages record quarantine
entries (keyed by (shard, key)); consumers record what they delivered. ``report()``
reconciles: for each shard, read == delivered + quarantined.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Dict, List, Optional

import ray


@ray.remote(num_cpus=0, max_restarts=0)
class Ledger:
    """Counts are kept per pass: iterating the dataset again (a new epoch of a Ray Train
    dataset shard) re-reads every shard; a shard's pass ends with its reader's closing
    record. Quarantine entries count once per (shard, key, pass)."""

    def __init__(self):
        self.chunks: Dict[str, Dict[int, int]] = {}  # current pass: chunk -> samples
        self.done_total: Counter = Counter()  # samples of completed passes
        self.passes: Counter = Counter()
        self.bad: Dict[tuple, dict] = {}
        self.delivered: Counter = Counter()
        self.slot_passes: Counter = Counter()
        self.resumes: Counter = Counter()  # transient read errors survived, per shard
        self.assignments: Dict[int, Dict[int, str]] = {}  # pass -> read-task slot -> shard
        self.nodes: Dict[str, set] = {}  # stage -> node ids it ran on

    def pass_of(self, shard: str) -> int:
        """How many passes over this shard have finished: the pass a new read belongs to
        (a retried read task of the same pass gets the same number)."""
        return self.passes[shard]

    def slot_pass(self, slot: int) -> int:
        """How many passes read task ``slot`` has finished (per-epoch shard permutation:
        slot i reads shard order(epoch)[i])."""
        return self.slot_passes[slot]

    def assign(self, pass_: int, slot: int, shard: str, node: str = "") -> None:
        self.assignments.setdefault(pass_, {})[slot] = shard
        if node:
            self.nodes.setdefault("read", set()).add(node)

    def slot_done(self, slot: int) -> None:
        self.slot_passes[slot] += 1

    def record_node(self, stage: str, node: str) -> None:
        self.nodes.setdefault(stage, set()).add(node)

    def record_read(self, shard: str, chunk: int, samples: int, entries: List[dict], done: bool,
                    resumes: int = 0) -> None:
        self.chunks.setdefault(shard, {})[chunk] = samples
        self.quarantine(entries)
        if resumes:
            self.resumes[shard] += resumes
        if done:
            self.done_total[shard] += sum(self.chunks.pop(shard).values())
            self.passes[shard] += 1

    def quarantine(self, entries: List[dict]) -> None:
        for e in entries:
            self.bad.setdefault((e["shard"], e["key"], self.passes[e["shard"]]), e)

    def record_delivered(self, counts: Dict[str, int]) -> None:
        self.delivered.update(counts)

    def report(self) -> dict:
        read = Counter(self.done_total)
        for shard, chunks in self.chunks.items():
            read[shard] += sum(chunks.values())
        report = build_report(dict(read), dict(self.passes), list(self.bad.values()), dict(self.delivered))
        report["nodes"] = {stage: sorted(n) for stage, n in self.nodes.items()}
        for shard, n in self.resumes.items():
            if shard in report["shards"]:
                report["shards"][shard]["resumes"] = n
        if self.resumes:
            report["totals"]["resumes"] = sum(self.resumes.values())
        report["shard_order"] = {str(p): [a[i] for i in sorted(a)] for p, a in sorted(self.assignments.items())}
        return report


def build_report(read: Dict[str, int], passes: Dict[str, int], quarantine: List[dict],
                 delivered: Dict[str, int]) -> dict:
    """Per-shard reconciliation plus totals and the quarantine list (one entry per
    (shard, key); counts include every pass)."""
    q_by_shard: Counter = Counter(e["shard"] for e in quarantine)
    shards = {}
    for shard in sorted(set(read) | set(delivered) | set(q_by_shard)):
        r, d, q = read.get(shard, 0), delivered.get(shard, 0), q_by_shard.get(shard, 0)
        shards[shard] = {"read": r, "delivered": d, "quarantined": q,
                         "passes": passes.get(shard, 0), "balanced": r == d + q}
    totals = {k: sum(s[k] for s in shards.values()) for k in ("read", "delivered", "quarantined")}
    totals["shards"] = len(shards)
    totals["balanced"] = all(s["balanced"] for s in shards.values())
    unique = {(e["shard"], e["key"]): e for e in quarantine}
    return {"totals": totals, "shards": shards,
            "quarantine": sorted(unique.values(), key=lambda e: (e["shard"], str(e["key"])))}


class LedgerSink:
    """Picklable quarantine sink for stages: blocks until the ledger has the entries, so a
    report taken after the stream ends is complete."""

    def __init__(self, ledger):
        self.ledger = ledger

    def __call__(self, entries: List[dict]) -> None:
        if entries:
            ray.get(self.ledger.quarantine.remote(entries))


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
