"""Which shards each read task reads in each epoch, and how weighted sources are drawn: a
picklable plan, a pure function of (seed, epoch, task slot). No Ray, no I/O."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..io.shards import Storage


@dataclass
class SourceShards:
    """One source's shards, as the read tasks see them."""
    name: str
    urls: List[str]
    storage: Storage
    weight: float = 1.0


@dataclass
class ReadPlan:
    """Which shards each read task reads, in each epoch, and how rows are mixed. Picklable."""
    sources: List[SourceShards]
    interleave: int = 1
    shuffle_buffer: int = 0
    seed: int = 0
    shuffle_shards: bool = False
    sizes: Dict[str, Optional[int]] = field(default_factory=dict)
    # a resumed run: the samples (index ranges per shard) of epoch ``skip_epoch`` the trainers had consumed
    skip: Dict[str, List[List[int]]] = field(default_factory=dict)
    skip_epoch: Optional[int] = None
    # ... and the samples of earlier epochs they held, not consumed (epoch -> shard -> ranges):
    # read again, with their own epoch, by the read tasks of epoch ``skip_epoch``
    pending: Dict[int, Dict[str, List[List[int]]]] = field(default_factory=dict)

    @property
    def tasks(self) -> int:
        """Read tasks per epoch: each reads at least ``interleave`` first-source shards at once
        (all of its shards: between interleave and 2 x interleave - 1)."""
        return max(1, len(self.sources[0].urls) // self.interleave)

    @property
    def shuffled(self) -> bool:
        return self.shuffle_shards or self.shuffle_buffer > 0

    def order(self, source: int, epoch: int) -> List[str]:
        urls = self.sources[source].urls
        if not self.shuffled:
            return list(urls)
        return shard_order(urls, self.seed + source, epoch)

    def task_shards(self, slot: int, epoch: int) -> List[str]:
        """The first source's shards read task ``slot`` reads in ``epoch``."""
        return self.order(0, epoch)[slot::self.tasks]

    def rotation(self, source: int, slot: int, epoch: int) -> List[str]:
        """A weighted source's shards in the order task ``slot`` cycles through them."""
        order = self.order(source, epoch)
        start = slot * len(order) // self.tasks
        return order[start:] + order[:start]

    def pending_reads(self, slot: int, epoch: int) -> List[tuple]:
        """[(source index, url, earlier epoch, index ranges)]: the pending samples read task
        ``slot`` reads again in the resumed ``epoch`` (none in any other epoch)."""
        if epoch != self.skip_epoch or not self.pending:
            return []
        where = {u: i for i, s in reversed(list(enumerate(self.sources))) for u in s.urls}
        items = sorted((e, u) for e, shards in self.pending.items() for u in shards)
        return [(where[u], u, e, self.pending[e][u]) for e, u in items[slot::self.tasks] if u in where]

    def rng(self, slot: int, epoch: int) -> random.Random:
        digest = hashlib.blake2b(f"buffer:{self.seed}:{epoch}:{slot}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "little"))


def shard_order(urls: List[str], seed: int, epoch: int) -> List[str]:
    """A seeded permutation of the shard list for one epoch."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest()
    order = list(urls)
    random.Random(int.from_bytes(digest, "little")).shuffle(order)
    return order
