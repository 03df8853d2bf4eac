"""Ray Data source over WebDataset tar shards: one read task per shard, Arrow blocks out.

Replaces ``ray.data.read_webdataset`` (one pandas DataFrame per sample; a truncated tar
fails the dataset; scripts/bench_reader.py compares the two): each task streams its shard with
:func:`specstream.io.samples.read_shard`, emits Arrow tables of ``block_rows`` samples and
records every chunk, quarantine entries included, in the run's ledger.

``decode`` (optional) is applied to each table inside the read task — a callable from an
Arrow table to a dict of numpy arrays, normally a :class:`~specstream.pipeline.stages.DecodeStage`
— so that reading and decoding run in one CPU task per shard and the decoded rows never
pass through the featurize actors' inputs undecoded. (Left to Ray's operator fusion, a
decode ``map_batches`` fuses into the featurize actor instead, and decoding serialises
there.)
"""
from __future__ import annotations

import hashlib
import os
import random
from typing import Callable, List, Optional

import pyarrow as pa
import ray
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ..io.samples import SCHEMA, ReaderOptions, read_shard
from ..io.shards import Storage, shard_sizes

OUT_SCHEMA = SCHEMA.append(pa.field("epoch", pa.int64()))


class ShardDatasource(Datasource):
    def __init__(self, urls: List[str], storage: Optional[Storage] = None,
                 options: Optional[ReaderOptions] = None, ledger=None,
                 decode: Optional[Callable] = None, base_epoch: int = 0,
                 shuffle_seed: Optional[int] = None, sizes: Optional[List[Optional[int]]] = None):
        super().__init__()
        self.shuffle_seed = shuffle_seed
        self.decode = decode
        self.base_epoch = base_epoch
        self.urls = list(urls)
        self.storage = storage or Storage()
        self.options = options or ReaderOptions()
        self.ledger = ledger
        self._sizes = list(sizes) if sizes is not None else shard_sizes(self.urls, self.storage)

    def get_name(self) -> str:
        return "WebDatasetShards"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        if any(s is None for s in self._sizes):
            return None
        return int(sum(self._sizes))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context=None) -> List[ReadTask]:
        tasks = []
        sizes = {u: s for u, s in zip(self.urls, self._sizes) if s is not None}
        for slot, (url, size) in enumerate(zip(self.urls, self._sizes)):
            meta = BlockMetadata(num_rows=None, size_bytes=None if size is None else int(size),
                                 exec_stats=None, input_files=(url,) if self.shuffle_seed is None else None)
            tasks.append(ReadTask(_make_read_fn(slot, self.urls, self.storage, self.options, self.ledger,
                                                self.decode, self.base_epoch, self.shuffle_seed, sizes),
                                  meta, schema=OUT_SCHEMA if self.decode is None else None,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def shard_order(urls: List[str], seed: int, epoch: int) -> List[str]:
    """A seeded permutation of the shard list for one epoch."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest()
    order = list(urls)
    random.Random(int.from_bytes(digest, "little")).shuffle(order)
    return order


def _test_fault(stage: str, shard: str, chunk: int) -> None:
    """Test hook (not configuration): when ``SPECSTREAM_TEST_FAULT_DIR`` is set and holds a
    file ``{stage}-exit`` whose text is ``<shard substring> <chunk>``, the first process to
    reach that chunk of a matching shard removes the file and exits at once, as a crashed
    worker would. Costs one environment lookup per chunk otherwise."""
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


def _make_read_fn(slot: int, urls: List[str], storage: Storage, options: ReaderOptions, ledger, decode,
                  base_epoch: int, shuffle_seed: Optional[int], sizes: dict):
    def read_fn():
        # Every pass over the dataset (each epoch of a Ray Train dataset shard) re-reads
        # the shards: rows carry epoch = base_epoch + pass, so augmentation differs per
        # epoch and stays a pure function of (seed, epoch, key). With shuffling, read task
        # ``slot`` of pass p reads shard shard_order(urls, seed, base_epoch + p)[slot]: each
        # pass reads every shard once, in that epoch's order.
        node = ray.get_runtime_context().get_node_id()
        if shuffle_seed is None:
            url = urls[slot]
            pass_ = ray.get(ledger.pass_of.remote(url)) if ledger is not None else 0
        else:
            pass_ = ray.get(ledger.slot_pass.remote(slot)) if ledger is not None else 0
            url = shard_order(urls, shuffle_seed, base_epoch + pass_)[slot]
        if ledger is not None:
            ray.get(ledger.assign.remote(pass_, slot, url, node))
        epoch = base_epoch + pass_
        seen = 0
        chunk = 0
        pending = None
        stats = None
        for table, bad, stats in read_shard(url, storage, options, size=sizes.get(url)):
            _test_fault("read", url, chunk)
            if ledger is not None:
                if pending is not None:
                    ray.get(pending)
                pending = ledger.record_read.remote(url, chunk, stats.samples - seen, bad, False)
            seen = stats.samples
            chunk += 1
            if table is not None and table.num_rows:
                table = table.append_column("epoch", pa.array([epoch] * table.num_rows, pa.int64()))
                if decode is None:
                    yield table
                    continue
                batch = decode(table)
                if len(batch["key"]):
                    yield BlockAccessor.batch_to_block(batch)
        if ledger is not None:
            if pending is not None:
                ray.get(pending)
            # the closing record marks the shard as finished (an empty chunk) and says how much
            # of it was read: bytes, and where an unread rest starts (if any)
            info = {"bytes_read": stats.bytes_read, "bytes_total": stats.bytes_total,
                    "compression": stats.compression, "unread": stats.unread, "corrupt": stats.corrupt}
            ray.get(ledger.record_read.remote(url, chunk, 0, [], True, stats.resumes, info))
            ray.get(ledger.slot_done.remote(slot))

    return read_fn
