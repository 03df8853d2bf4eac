"""One read task's rows: its shards read, interleaved, weighted and shuffled into Arrow blocks.

What goes into each block (``sampling`` in the config), decided here, before decoding and
featurizing, so that the featurize stage's mixup partners are shuffled neighbours:

- A read task reads at least ``interleave`` shards of the first source at once (the epoch's
  shard order, dealt round-robin to ``shards // interleave`` tasks), taking their chunks in
  turn.
- Other sources (``source`` given as a list) are drawn by weight, row by row, against the
  first source's rows: after every piece of ``PIECE_ROWS`` rows the source furthest behind
  its share gives the next piece. Each task cycles through its own rotation of a weighted
  source's shards and stops reading them when its first-source shards are done: the first
  source defines the epoch, the others are sampled.
- A shuffle buffer of ``shuffle_buffer`` samples (raw bytes, not decoded audio) per task
  emits a seeded random one for each that arrives (webdataset's ``shuffle(n)``), then drains
  at random.

Every choice is a function of (seed, epoch, task slot): a retried read task emits the same
rows in the same order. Which task's block reaches which consumer first is up to Ray's
scheduler.

A read's chunks are recorded in the run's ledger through the task's
:class:`~specstream.pipeline.ledger.LedgerClient`. No Ray here beyond that client:
:func:`task_blocks` runs in one process for tests and benchmarks.
"""
from __future__ import annotations

import itertools
import os
import random
from typing import TYPE_CHECKING, Callable, List, Optional

import pyarrow as pa

from ..io.samples import SCHEMA, ReaderOptions, read_shard
from ..io.shards import Storage
from . import columns as C
from .plan import ReadPlan

if TYPE_CHECKING:  # the ledger module needs Ray; reading does not (the GPU box has no Ray)
    from .ledger import LedgerClient

# rows the reader adds per block: the epoch (augmentation draws depend on it) and the read id
# (which read of which shard a row came from: quarantine entries count once per read)
OUT_SCHEMA = SCHEMA.append(pa.field(C.EPOCH, pa.int64())).append(pa.field(C.READ_ID, pa.string()))
PIECE_ROWS = 8  # weighted sources are interleaved in pieces of this many rows


def _test_fault(stage: str, shard: str, chunk: int) -> None:
    """Test hook (not configuration): when ``SPECSTREAM_TEST_FAULT_DIR`` is set and holds a
    file ``{stage}-exit`` whose text is ``<substring> <count>``, the first process to reach
    that count (a read task: chunk of a shard whose url holds the substring; a featurize
    actor: its batch, substring ``actor``) removes the file and exits at once, as a crashed
    worker would. Costs one environment lookup per call otherwise."""
    d = os.environ.get("SPECSTREAM_TEST_FAULT_DIR")
    if not d:
        return
    path = os.path.join(d, f"{stage}-exit")
    try:
        with open(path, encoding="utf-8") as f:
            what, _, at = f.read().strip().rpartition(" ")
    except FileNotFoundError:
        return
    if what in shard and chunk == int(at):
        try:
            os.remove(path)
        except FileNotFoundError:
            return  # another process got there first
        os._exit(1)


class _ShardRead:
    """One read of one shard inside a read task: its chunks go to the ledger (through the
    task's :class:`LedgerClient`), its rows out as Arrow tables tagged with the epoch and
    read id."""

    def __init__(self, url: str, storage: Storage, options: ReaderOptions, size: Optional[int],
                 ledger: LedgerClient, read_id: str, epoch: int, skip=None, until: Optional[int] = None):
        self.url, self.ledger, self.read_id, self.epoch = url, ledger, read_id, epoch
        self.pending = until is not None  # a resumed run re-reading some samples of an earlier epoch
        self._gen = read_shard(url, storage, options, size=size, skip=skip, until=until)
        self.chunk = 0
        self.last = (0, 0)
        self.seen = 0
        self.stats = None
        self.done = False

    def _record(self, chunk: int, samples: int, entries: List[dict], done: bool, resumes: int = 0,
                info: Optional[dict] = None) -> None:
        self.ledger.record(self.read_id, self.url, chunk, samples, entries, done, resumes, info)

    def next_table(self) -> Optional[pa.Table]:
        """The next chunk's rows (possibly an empty table), or None at the end of the shard."""
        if self.done:
            return None
        try:
            table, bad, self.stats = next(self._gen)
        except StopIteration:
            self.close()
            return None
        _test_fault("read", self.url, self.chunk)
        for e in bad:
            e["read"] = self.read_id
        self.last = (self.chunk, self.stats.samples - self.seen)
        self._record(self.chunk, self.stats.samples - self.seen, bad, False)
        self.seen = self.stats.samples
        self.chunk += 1
        if table is None or not table.num_rows:
            return pa.Table.from_pylist([], schema=OUT_SCHEMA)
        n = table.num_rows
        return (table.append_column(C.EPOCH, pa.array([self.epoch] * n, pa.int64()))
                .append_column(C.READ_ID, pa.array([self.read_id] * n, pa.string())))

    def give_back(self, rows: int) -> None:
        """The last chunk's final ``rows`` were not taken (a weighted source's read stopped
        part-way through a chunk): they are not counted as read."""
        if rows:
            chunk, samples = self.last
            self._record(chunk, samples - rows, [], False)

    def abandon(self) -> None:
        """Stop reading, with no closing record (the task was cancelled or failed)."""
        self.done = True
        self._gen.close()

    def close(self, sampled: bool = False) -> None:
        """The closing record: marks this read finished and says how much of the shard was read
        (``sampled``: stopped on purpose, a weighted source's share for this epoch was taken)."""
        if self.done:
            return
        self.done = True
        self._gen.close()
        s = self.stats
        info = {"bytes_read": getattr(s, "bytes_read", 0), "bytes_total": getattr(s, "bytes_total", None),
                "skipped": getattr(s, "skipped", 0),
                "compression": getattr(s, "compression", None), "unread": getattr(s, "unread", None),
                "corrupt": getattr(s, "corrupt", None)}
        if sampled:
            info["sampled"] = True
        if self.pending:
            info["pending"] = True
        self._record(self.chunk, 0, [], True, getattr(s, "resumes", 0), info)


class _Source:
    """Rows of one source for one read task, a piece at a time. The first source reads its
    shards at once, a chunk from each in turn, and ends; a weighted source cycles through its
    rotation until the task closes it."""

    def __init__(self, index: int, urls: List[str], weight: float, open_read: Callable, cyclic: bool):
        self.index, self.urls, self.weight, self.cyclic = index, urls, weight, cyclic
        self.open_read = open_read
        self.reads: List[_ShardRead] = []
        self.next_url = 0
        self.turn = 0
        self.table: Optional[pa.Table] = None
        self.offset = 0
        self.taken = 0
        self.dry = 0  # shards opened in a row that gave no rows (a source of only bad or empty shards ends)
        if not cyclic:
            self.reads = [open_read(u) for u in urls]

    def _next_table(self) -> Optional[pa.Table]:
        while True:
            if self.cyclic:
                if not self.reads:
                    if not self.urls or self.dry >= len(self.urls):
                        return None
                    self.reads = [self.open_read(self.urls[self.next_url % len(self.urls)])]
                    self.next_url += 1
                    self.dry += 1
                t = self.reads[0].next_table()
                if t is None:
                    self.reads = []
                    continue
                if t.num_rows:
                    self.dry = 0
                return t
            if not self.reads:
                return None
            self.turn %= len(self.reads)
            t = self.reads[self.turn].next_table()
            if t is None:
                del self.reads[self.turn]
                continue
            self.turn += 1
            return t

    def piece(self, rows: Optional[int]) -> Optional[pa.Table]:
        """Up to ``rows`` rows (None: the rest of the current chunk), or None when the source has
        no more."""
        while self.table is None or self.offset >= self.table.num_rows:
            self.table, self.offset = self._next_table(), 0
            if self.table is None:
                return None
        n = self.table.num_rows - self.offset if rows is None else min(rows, self.table.num_rows - self.offset)
        out = self.table.slice(self.offset, n)
        self.offset += n
        self.taken += n
        return out

    def abandon(self) -> None:
        for r in self.reads:
            r.abandon()
        self.reads = []

    def close(self) -> None:
        if self.reads and self.table is not None:  # a cyclic source reads one shard at a time
            self.reads[0].give_back(self.table.num_rows - self.offset)
        for r in self.reads:
            r.close(sampled=True)
        self.reads = []


def _pieces(sources: List[_Source]):
    """Pieces of rows from the sources, weighted sources interleaved by weight, until the first
    source is done."""
    first = sources[0]
    others = sources[1:]
    total_w = sum(s.weight for s in sources)
    finished = False
    try:
        while True:
            live = [s for s in others if s.urls and s.dry < len(s.urls)]
            if not live:
                t = first.piece(None)
                if t is None:
                    finished = True
                    return
                yield t
                continue
            # the source furthest behind its share of the rows taken so far gives the next piece
            drawn = sum(s.taken for s in sources)
            pick = min([first] + live, key=lambda s: (s.taken - drawn * s.weight / total_w, s.index))
            t = pick.piece(PIECE_ROWS)
            if t is None:
                if pick is first:
                    finished = True
                    return
                continue
            yield t
    finally:
        # the epoch's share taken: the weighted sources' reads end here, counted as sampled. A task
        # cancelled or failing part-way sends no closing record: its reads stay open in the ledger
        # and a retry of the task (same read ids) counts them again from the start
        for s in sources:
            s.close() if finished else s.abandon()


def _shuffled(pieces, buffer: int, rng: random.Random):
    """Rows through a shuffle buffer of ``buffer`` rows: once full, each arriving row sends out a
    random one; at the end the rest leave in random order. Yields lists of row dicts."""
    held: List[dict] = []
    for t in pieces:
        out = []
        for row in t.to_pylist():
            if len(held) < buffer:
                held.append(row)
                continue
            i = rng.randrange(len(held))
            out.append(held[i])
            held[i] = row
        if out:
            yield out
    rng.shuffle(held)
    yield held


def _blocks(plan: ReadPlan, sources: List[_Source], rng: random.Random, block_rows: int):
    """Arrow blocks of ``block_rows`` rows from the sources, shuffled when configured."""
    if plan.shuffle_buffer <= 0:
        pending, n = [], 0
        for t in _pieces(sources):
            pending.append(t)
            n += t.num_rows
            if n >= block_rows:
                yield pa.concat_tables(pending)
                pending, n = [], 0
        if pending:
            yield pa.concat_tables(pending)
        return
    rows: List[dict] = []
    for out in _shuffled(_pieces(sources), plan.shuffle_buffer, rng):
        rows.extend(out)
        while len(rows) >= block_rows:
            yield pa.Table.from_pylist(rows[:block_rows], schema=OUT_SCHEMA)
            rows = rows[block_rows:]
    if rows:
        yield pa.Table.from_pylist(rows, schema=OUT_SCHEMA)


def task_blocks(plan: ReadPlan, slot: int, epoch: int, options: ReaderOptions,
                ledger: Optional[LedgerClient] = None):
    """Read task ``slot``'s Arrow blocks for ``epoch``: its first-source shards read at once,
    the weighted sources drawn against them, through the shuffle buffer. ``ledger``: the
    task's client of the run's ledger (the caller flushes it when the task ends), or None
    (no accounting: tests and benchmarks run it in one process)."""
    opened = [0]
    if ledger is None:
        from .ledger import LedgerClient

        ledger = LedgerClient(None)

    def opener(source: int):
        def open_read(url: str) -> _ShardRead:
            opened[0] += 1
            skip = plan.skip.get(url) if epoch == plan.skip_epoch else None
            return _ShardRead(url, plan.sources[source].storage, options, plan.sizes.get(url), ledger,
                              f"{epoch}/{slot}/{opened[0]}", epoch, skip)
        return open_read

    sources = [_Source(0, plan.task_shards(slot, epoch), plan.sources[0].weight, opener(0), cyclic=False)]
    sources += [_Source(i, plan.rotation(i, slot, epoch), s.weight, opener(i), cyclic=True)
                for i, s in enumerate(plan.sources[1:], 1)]
    pending = [_ShardRead(url, plan.sources[source].storage, options, plan.sizes.get(url), ledger,
                          f"{epoch}/{slot}/pending{n}", earlier, _complement(ranges), until=ranges[-1][1])
               for n, (source, url, earlier, ranges) in enumerate(plan.pending_reads(slot, epoch))]
    return itertools.chain(_pending_blocks(pending), _blocks(plan, sources, plan.rng(slot, epoch), options.block_rows))


def _complement(ranges: List[List[int]]) -> List[List[int]]:
    """The indices before ``ranges``' end that are not in them (what a pending read skips)."""
    out, at = [], 0
    for a, b in ranges:
        if a > at:
            out.append([at, a])
        at = b
    return out


def _pending_blocks(reads: List["_ShardRead"]):
    """A resumed run's pending samples (rows of earlier epochs the trainers held), read before
    the epoch's own: each read stops after its last pending sample (the reader stops there
    on purpose: nothing is unread); the samples it passes over were consumed, and count as
    ``skipped``."""
    for r in reads:
        while True:
            table = r.next_table()  # closes the read at its end
            if table is None:
                break
            if table.num_rows:
                yield table
