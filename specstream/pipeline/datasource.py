"""Ray Data source over WebDataset tar shards: read tasks stream shards, Arrow blocks out.

Replaces ``ray.data.read_webdataset`` (one pandas DataFrame per sample; a truncated tar
fails the dataset; scripts/bench_reader.py compares the two): each task streams its shards
with :func:`specstream.io.samples.read_shard`, emits Arrow tables of ``block_rows`` samples
and records every chunk, quarantine entries included, in the run's ledger. Which shards a
task reads is :mod:`~specstream.pipeline.plan`'s; how its rows are mixed into blocks is
:mod:`~specstream.pipeline.readtask`'s.

``decode`` (optional) is applied to each block inside the read task — normally a
:class:`~specstream.pipeline.stages.DecodeStage` — so that reading and decoding run in one
CPU task and the decoded rows never pass through the featurize actors' inputs undecoded.
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional

import ray
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ..io.samples import ReaderOptions
from ..io.shards import Storage, shard_sizes
from . import columns as C
from .ledger import LedgerClient
from .plan import ReadPlan, SourceShards
from .readtask import OUT_SCHEMA, task_blocks


class ShardDatasource(Datasource):
    def __init__(self, plan: ReadPlan, options: Optional[ReaderOptions] = None, ledger=None,
                 decode: Optional[Callable] = None, base_epoch: int = 0):
        super().__init__()
        self.plan = plan
        self.decode = decode
        self.base_epoch = base_epoch
        self.options = options or ReaderOptions()
        self.ledger = ledger
        for s in plan.sources:
            missing = [u for u in s.urls if u not in plan.sizes]
            if missing:
                plan.sizes.update(zip(missing, shard_sizes(missing, s.storage)))

    @classmethod
    def over(cls, urls: List[str], storage: Optional[Storage] = None, **kw) -> "ShardDatasource":
        """One source, one shard per read task, file order: the plain reader."""
        return cls(ReadPlan([SourceShards("default", list(urls), storage or Storage())]), **kw)

    def get_name(self) -> str:
        return "WebDatasetShards"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        sizes = [self.plan.sizes.get(u) for u in self.plan.sources[0].urls]
        if any(s is None for s in sizes):
            return None
        return int(sum(sizes))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context=None) -> List[ReadTask]:
        plan = self.plan
        fixed = not plan.shuffled and plan.interleave == 1
        tasks = []
        for slot in range(plan.tasks):
            shards = plan.task_shards(slot, self.base_epoch)
            size = sum(plan.sizes.get(u) or 0 for u in shards)
            meta = BlockMetadata(num_rows=None, size_bytes=size or None, exec_stats=None,
                                 input_files=tuple(shards) if fixed else None)
            tasks.append(ReadTask(_make_read_fn(slot, plan, self.options, self.ledger, self.decode, self.base_epoch),
                                  meta, schema=OUT_SCHEMA if self.decode is None else None,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def _make_read_fn(slot: int, plan: ReadPlan, options: ReaderOptions, ledger, decode, base_epoch: int):
    def read_fn():
        # Every pass over the dataset (each epoch of a Ray Train dataset shard) re-reads: rows
        # carry epoch = base_epoch + pass, so augmentation differs per epoch and stays a pure
        # function of (seed, epoch, key). Read task ``slot`` of pass p reads the shards
        # plan.task_shards(slot, base_epoch + p): each pass reads every first-source shard once.
        node = ray.get_runtime_context().get_node_id()
        pass_ = ray.get(ledger.slot_pass.remote(slot)) if ledger is not None else 0
        epoch = base_epoch + pass_
        shards = plan.task_shards(slot, epoch)
        if ledger is not None:
            ray.get(ledger.assign.remote(pass_, slot, shards, node))
        client = LedgerClient(ledger)
        blocks = task_blocks(plan, slot, epoch, options, client)
        read_s, read_rows = 0.0, 0
        finished = False
        try:
            while True:
                t0 = time.perf_counter()
                table = next(blocks, None)
                read_s += time.perf_counter() - t0
                if table is None:
                    break
                read_rows += table.num_rows
                if not table.num_rows:
                    continue
                if decode is None:
                    yield table
                    continue
                batch = decode(table)
                if len(batch[C.KEY]):
                    yield BlockAccessor.batch_to_block(batch)
            finished = True
        finally:
            if not finished:  # the consumer stopped (or the task failed): rows already sent count as read
                client.send_rest()
        client.flush()
        if ledger is not None:
            ledger.record_stage.remote("read", read_rows, 0.0, read_s)
            ray.get(ledger.slot_done.remote(slot))

    return read_fn
