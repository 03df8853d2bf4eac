"""Batch composition on the trainer side, without Ray: duration buckets and padding figures.

Rows arrive as dicts of numpy values (one sample each); :class:`DurationBatcher` groups them
into batches of one duration bucket under a padded-duration budget, lhotse's
``DynamicBucketingSampler`` idea on a stream: a bucket's batch is sent as soon as one more
sample would take it past ``max_duration_s`` of padded audio (batch size x its longest
sample's cost), so the frames a trainer holds per batch are bounded.
"""
from __future__ import annotations

import bisect
import itertools
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from . import columns as C

Row = Dict[str, object]
Batch = Dict[str, np.ndarray]

_OBJECT = C.OBJECT  # columns that stay one Python object per row


def rows_of(batch: Batch) -> List[Row]:
    """A numpy batch (dict of columns) -> one dict per row (views, no copies)."""
    names = list(batch)
    n = len(batch[C.KEY])
    return [{k: batch[k][i] for k in names} for i in range(n)]


def batch_of(rows: Sequence[Row]) -> Batch:
    """Rows -> a numpy batch: equal-shape arrays stacked, ragged ones (full-mode features,
    tokens) kept as an object column for the collate step to pad."""
    out: Batch = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        first = vals[0]
        if k in _OBJECT or (isinstance(first, np.ndarray) and first.ndim and
                            any(v.shape != first.shape for v in vals)) or (isinstance(first, np.ndarray)
                                                                          and first.dtype == object):
            col = np.empty(len(vals), dtype=object)
            col[:] = vals
            out[k] = col
        else:
            out[k] = np.stack([np.asarray(v) for v in vals])
    return out


def padding_stats(lengths: Iterable[Sequence[int]]) -> Dict[str, float]:
    """Over batches given as their rows' lengths (frames): ``frames`` of signal, ``padded_frames``
    (batch size x longest, summed), ``padding_fraction`` = 1 - frames / padded_frames, and the
    largest batch's padded frames."""
    frames = padded = largest = 0
    for ls in lengths:
        ls = list(ls)
        if not ls:
            continue
        frames += int(sum(ls))
        p = len(ls) * int(max(ls))
        padded += p
        largest = max(largest, p)
    return {"frames": frames, "padded_frames": padded, "max_batch_padded_frames": largest,
            "padding_fraction": 1.0 - frames / padded if padded else 0.0}


def estimate_boundaries(durations: Sequence[float], num_buckets: int) -> List[float]:
    """Bucket edges that give every bucket about the same total duration (lhotse's
    ``estimate_duration_buckets``): edges where the sorted durations' running sum crosses
    k / num_buckets of the total. Repeated edges collapse, so a narrow spread gives fewer
    buckets."""
    d = np.sort(np.asarray(durations, dtype=np.float64))
    if len(d) == 0 or num_buckets <= 1:
        return []
    cum = np.cumsum(d)
    total = cum[-1]
    edges = []
    for k in range(1, num_buckets):
        i = int(np.searchsorted(cum, total * k / num_buckets))
        e = float(d[min(i, len(d) - 1)])
        if (not edges or e > edges[-1]) and e < d[-1]:
            edges.append(e)
    return edges


class DurationBatcher:
    """Batches of one duration bucket under a padded-duration budget.

    ``max_duration_s``: the budget, batch size x cost(longest); cost(d) = d, or d + d**2 / q
    with ``quadratic_duration`` q. A sample over the budget alone makes a batch of one.
    ``boundaries_s``: bucket edges; None: estimated from the first ``buffer`` samples'
    durations (:func:`estimate_boundaries`). ``seconds_per_frame``: the features' hop.
    ``max_batch_size``: an optional cap on samples per batch.
    """

    def __init__(self, max_duration_s: float, seconds_per_frame: float, num_buckets: int = 10, buffer: int = 1000,
                 quadratic_duration: Optional[float] = None, boundaries_s: Optional[Sequence[float]] = None,
                 max_batch_size: Optional[int] = None):
        self.max_duration_s = float(max_duration_s)
        self.spf = float(seconds_per_frame)
        self.num_buckets = int(num_buckets)
        self.buffer = int(buffer)
        self.q = quadratic_duration
        self.edges: Optional[List[float]] = list(boundaries_s) if boundaries_s is not None else None
        self.max_batch_size = max_batch_size

    @classmethod
    def from_config(cls, b, seconds_per_frame: float) -> "DurationBatcher":
        return cls(b.max_duration_s, seconds_per_frame, b.num_buckets, b.buffer, b.quadratic_duration, b.boundaries_s,
                   b.max_batch_size)

    def cost(self, seconds: float) -> float:
        return seconds + seconds * seconds / self.q if self.q else seconds

    def duration(self, row: Row) -> float:
        return float(row[C.LENGTH]) * self.spf

    def __call__(self, rows: Iterable[Row]) -> Iterator[List[Row]]:
        """Rows in, lists of rows (batches) out; the buckets' remainders at the end."""
        it = iter(rows)
        if self.edges is None:
            head = []
            for row in it:
                head.append(row)
                if len(head) >= self.buffer:
                    break
            self.edges = estimate_boundaries([self.duration(r) for r in head], self.num_buckets)
            it = itertools.chain(head, it)
        buckets: List[List[Row]] = [[] for _ in range(len(self.edges) + 1)]
        longest = [0.0] * len(buckets)
        for row in it:
            d = self.duration(row)
            b = bisect.bisect_right(self.edges, d)
            bucket = buckets[b]
            top = max(longest[b], d)
            full = bucket and ((len(bucket) + 1) * self.cost(top) > self.max_duration_s
                               or (self.max_batch_size is not None and len(bucket) >= self.max_batch_size))
            if full:
                yield bucket
                bucket = buckets[b] = []
                top = d
            bucket.append(row)
            longest[b] = top
        for bucket in buckets:
            if bucket:
                yield bucket
