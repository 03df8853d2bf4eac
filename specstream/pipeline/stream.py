"""The trainer's stream: epochs of padded torch batches, bucketed by duration when configured,
the same number of batches on every rank.

Inside a Ray Train loop::

    stream = TrainStream(ray.train.get_dataset_shard("train"), config, ledger=ledger)
    for epoch in range(epochs):
        for batch in stream:        # one epoch
            ...
        print(stream.last_epoch)    # batches, samples, padding fraction, carried rows

Equal steps: with ``torch.distributed`` initialised (Ray Train's TorchTrainer does it) and
``sampling.equal_steps`` on, the ranks agree before every step, with one all-reduce of one
integer, whether all of them still have a batch. When one has run out, the rows the others
still hold (their next batches and the rest of their split) are gathered, ordered by key and
dealt out evenly (``all_gather_object``), batched again, and voted on the same way for a few
last common steps. What is left after those (less than a batch per rank with fixed-size
batches) is carried into that rank's next epoch and counted as ``carried`` in the run's
report until delivered. So the epoch ends on every rank at the same step and a DDP
all-reduce never waits for a rank that has left. Iterate each epoch to its end on every rank
(a rank that leaves the loop early leaves the others waiting).

Ray Train's default split (``streaming_split(equal=True)``) truncates the rows past an equal
count; :class:`StreamDataConfig` splits without truncating: pass it as the TorchTrainer's
``dataset_config`` so that nothing read is dropped there.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import Counter
from typing import Dict, Iterator, List, Optional, Union

import numpy as np
import ray
import torch

from ..config import PipelineConfig, SamplingConfig, load_config
from . import columns as C
from .compose import DurationBatcher, batch_of, padding_stats, rows_of
from .deliver import collate, default_device
from .ledger import DeliveryCounter

READ_ROWS = 256  # rows fetched from Ray per call when batches are formed here (bucketing)


def _distributed():
    """The default process group when torch.distributed is initialised with more than one rank."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


class TrainStream:
    """Epochs of torch batches from a Ray Train dataset shard, a ``streaming_split`` piece or
    a Dataset. ``config``: the pipeline's config (dict, path or PipelineConfig): its
    ``sampling`` (bucketing, equal steps), ``deliver`` (batch size, prefetch) and features'
    hop. ``ledger``: the pipeline's ledger actor (delivered and carried counts)."""

    def __init__(self, source, config: Union[dict, str, PipelineConfig, None] = None, ledger=None,
                 batch_size: Optional[int] = None, device: Union[str, torch.device, None] = None,
                 equal_steps: Optional[bool] = None):
        cfg = load_config(config) if config is not None else None
        self.source = source
        self.ledger = ledger
        self.sampling = cfg.sampling if cfg is not None else SamplingConfig()
        self.batch_size = batch_size or (cfg.deliver.batch_size if cfg is not None else 64)
        self.prefetch = cfg.deliver.prefetch_batches if cfg is not None else 2
        self.drop_last = cfg.deliver.drop_last if cfg is not None else False
        self.seconds_per_frame = (cfg.features.hop_length / cfg.features.sample_rate) if cfg is not None else 0.01
        self.equal_steps = self.sampling.equal_steps if equal_steps is None else equal_steps
        self.device = torch.device(device) if device is not None else default_device()
        self.carry: List[Dict[str, np.ndarray]] = []
        # the stream state: the epoch in progress and which of its samples (shard -> indices) were consumed
        self.base_epoch = cfg.epoch if cfg is not None else 0
        self.seed = cfg.seed if cfg is not None else 0
        self._state_epoch = self.base_epoch
        self._consumed: Dict[str, List[int]] = {}
        self._last = None  # the batch yielded last: consumed once its step is done (the next request)
        # rows of earlier epochs: yielded in this run (epoch -> shard -> indices), and carried in
        # at this epoch's start but not yet yielded ({(epoch, shard, index)})
        self._pending_done: Dict[int, Dict[str, List[int]]] = {}
        self._carried_in_left: set = set()
        self._base: Optional[dict] = None  # the state this run resumed from (the ledger keeps it)
        self._batcher: Optional[DurationBatcher] = None  # bucket edges, estimated once, kept across epochs
        self.epochs = 0
        self.last_epoch: Dict[str, float] = {}

    # -- batches before collation -------------------------------------------------------------------------------
    def _fresh(self):
        """(this epoch's batches from Ray, the pull to close). The pull starts now, not at the
        first ``next``: the ranks' iterations over a ``streaming_split`` start together (a
        barrier), and a rank that opens its epoch with carried batches must not hold the
        others at it."""
        b = self.sampling.bucketing
        if b is None:
            pull = _pulled(self.source.iter_batches(batch_size=self.batch_size, batch_format="numpy",
                                                    prefetch_batches=self.prefetch),
                           depth=max(4, self.prefetch))
            return pull, pull
        batcher = self._batcher = self._batcher or DurationBatcher.from_config(b, self.seconds_per_frame)
        pull = _pulled(self.source.iter_batches(batch_size=READ_ROWS, batch_format="numpy",
                                                prefetch_batches=self.prefetch),
                       depth=max(4, 2 * b.buffer // READ_ROWS + b.num_buckets))

        def rows():
            for chunk in pull:
                yield from rows_of(chunk)

        return (batch_of(group) for group in batcher(rows())), pull

    def _carried(self, batches, sign: int) -> None:
        counts = Counter()
        for b in batches:
            counts.update(str(s) for s in b[C.SHARD])
        if counts and self.ledger is not None:
            ray.get(self.ledger.record_carried.remote({k: sign * v for k, v in counts.items()}))

    @staticmethod
    def _vote(dist, have: bool) -> bool:
        """True when every rank has a batch for this step (one all-reduce MIN of one integer)."""
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")
        flag = torch.tensor([1 if have else 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _mark_last(self) -> None:
        b, self._last = self._last, None
        if b is None or C.INDEX not in b:
            return
        for shard, index, epoch in zip(b[C.SHARD], b[C.INDEX], b[C.EPOCH]):
            epoch, shard, index = int(epoch), str(shard), int(index)
            if epoch == self._state_epoch:
                self._consumed.setdefault(shard, []).append(index)
            else:  # a row of an earlier epoch, carried over (or pending in the state this run resumed from)
                self._pending_done.setdefault(epoch, {}).setdefault(shard, []).append(index)
                self._carried_in_left.discard((epoch, shard, index))

    @staticmethod
    def _rows_held(batches, also=()) -> Dict[int, Dict[str, List[int]]]:
        held: Dict[int, Dict[str, List[int]]] = {}
        for b in batches:
            if C.INDEX in b:
                for shard, index, epoch in zip(b[C.SHARD], b[C.INDEX], b[C.EPOCH]):
                    held.setdefault(int(epoch), {}).setdefault(str(shard), []).append(int(index))
        for epoch, shard, index in also:
            held.setdefault(epoch, {}).setdefault(shard, []).append(index)
        return held

    def state_dict(self) -> dict:
        """The stream's state: the epoch in progress and the samples of it the trainers have
        consumed (every batch yielded so far, the last one included: call it after the step).
        With torch.distributed initialised it is a collective (call it on every rank): the
        ranks' states are gathered and merged, and every rank gets the whole state. Save it
        with the checkpoint; ``build_pipeline(config, resume=state)`` reads the rest of the
        epoch (see the README's Resume section)."""
        self._mark_last()
        from ..resume import (add_indices, make_state, merge, merge_states, pending_of, subtract_pending,
                              union_pending)

        def ranges(d):
            return {e: {s: add_indices([], idx) for s, idx in sh.items()} for e, sh in d.items()}

        fp = ray.get(self.ledger.fingerprint.remote()) if self.ledger is not None else ""
        if self._base is None and self.ledger is not None:
            self._base = ray.get(self.ledger.resumed.remote()) or {}
        base = self._base or {}
        consumed = {s: add_indices([], idx) for s, idx in self._consumed.items()}
        if base.get("epoch") == self._state_epoch:  # the resumed epoch: what the earlier runs consumed too
            for s, r in base["consumed"].items():
                consumed[s] = merge(consumed.get(s, []) + [list(x) for x in r])
        held = ranges(self._rows_held(self.carry, self._carried_in_left))
        local = make_state(fp, self.seed, self._state_epoch, consumed, held,
                           pending_done=ranges(self._pending_done))
        dist = _distributed()
        if dist is None:
            merged = local
        else:
            states: List = [None] * dist.get_world_size()
            dist.all_gather_object(states, local)
            merged = merge_states(states)
        # pending: the resumed state's pending samples and every rank's held rows, less what any rank
        # has yielded (equal steps deal a rank's carried rows out: another rank may yield them)
        done = merged.pop("pending_done", {}) or {}
        pending = subtract_pending(union_pending(pending_of(base), pending_of(merged)),
                                   {int(e): sh for e, sh in done.items()})
        return make_state(fp, self.seed, merged["epoch"], merged["consumed"], pending)

    def _deal(self, dist, left: List[Dict[str, np.ndarray]]) -> List[Dict[str, np.ndarray]]:
        """Every rank's remaining rows gathered (all_gather_object), ordered by key and dealt
        round-robin: rank r takes rows r, r + world, ...; batched again like the stream."""
        rows = [r for b in left for r in rows_of(b)]
        gathered: List = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, rows)
        everything = sorted((r for part in gathered for r in part), key=lambda r: str(r[C.KEY]))
        mine = everything[dist.get_rank()::dist.get_world_size()]
        if self._batcher is not None:
            groups = list(self._batcher(iter(mine)))
        else:
            groups = [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        return [batch_of(g) for g in groups if g]

    # -- one epoch ----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Dict[str, object]]:
        dist = _distributed() if self.equal_steps else None
        carried_in, self.carry = self.carry, []
        self._carried(carried_in, -1)
        self._carried_in_left = {(e, s, i) for e, sh in self._rows_held(carried_in).items()
                                 for s, idx in sh.items() for i in idx}
        if self.drop_last and self.sampling.bucketing is None and len(carried_in) > 1:
            rows = [r for b in carried_in for r in rows_of(b)]  # partial batches held back: full ones again
            carried_in = [batch_of(rows[i:i + self.batch_size]) for i in range(0, len(rows), self.batch_size)]
        counter = DeliveryCounter(self.ledger)
        pin = self.device.type == "cuda"
        lengths, samples, wait, first = [], 0, 0.0, None
        t0 = time.perf_counter()
        if self.ledger is not None:  # read tasks take this pass, even after an iteration left part-way
            began = self.ledger.begin_pass.remote(self.epochs)
            # Pass 0 is what every first read gets whether or not this call has arrived
            # (Ledger.slot_pass), so the first epoch does not wait for the ledger's process to start.
            if self.epochs:
                ray.get(began)
        fresh, pull = self._fresh()
        batches = itertools.chain(carried_in, fresh)
        self._state_epoch, self._consumed, self._last = self.base_epoch + self.epochs, {}, None
        completed = False
        dealt = False
        held: List[Dict[str, np.ndarray]] = []  # partial batches held back by drop_last
        try:
            while True:
                tw = time.perf_counter()
                batch = next(batches, None)
                while batch is not None and self.drop_last and self._batcher is None \
                        and len(batch[C.KEY]) < self.batch_size:
                    held.append(batch)  # drop_last: a partial batch is not trained on; it is carried, not lost
                    batch = next(batches, None)
                wait += time.perf_counter() - tw
                if dist is not None and not self._vote(dist, batch is not None):
                    # a rank has run out: what the others hold is dealt out evenly once, for a few last
                    # common steps; what is left after those is carried into this rank's next epoch
                    left = held + ([batch] if batch is not None else []) + list(batches)
                    held = []
                    if not dealt:
                        dealt = True
                        batches = iter(self._deal(dist, left))
                        continue
                    if left:
                        self.carry = left
                        self._carried(self.carry, +1)
                    completed = True
                    break
                if batch is None:
                    completed = True
                    break
                out = collate(batch)
                for name in C.DEVICE:
                    if name in out:
                        t = out[name].pin_memory() if pin else out[name]
                        out[name] = t.to(self.device, non_blocking=pin)
                counter.add(out[C.SHARD])
                lengths.append(np.asarray(batch[C.LENGTH]).tolist())
                samples += len(out[C.KEY])
                self._last = batch
                if first is None:
                    first = time.perf_counter() - t0
                yield out
                self._mark_last()
        finally:
            pull.close()  # stops the pull thread, also when the consumer left during the carried batches
            if completed:  # the epoch is done: the state moves to the next, nothing of it consumed yet
                self._state_epoch, self._consumed, self._last = self._state_epoch + 1, {}, None
                # carried-in rows this rank did not yield were dealt to others or are in its carry now
                self._carried_in_left = set()
            if held:
                self.carry.extend(held)
                self._carried(held, +1)
            counter.flush()
            dt = time.perf_counter() - t0
            self.epochs += 1
            self.last_epoch = {"epoch": self.epochs - 1, "batches": len(lengths), "samples": samples,
                               "carried_in": sum(len(b[C.KEY]) for b in carried_in),
                               "carried_out": sum(len(b[C.KEY]) for b in self.carry),
                               "seconds": dt, "data_wait_s": wait, "first_batch_s": first,
                               "audio_s": sum(sum(ls) for ls in lengths) * self.seconds_per_frame,
                               **padding_stats(lengths)}


_END = object()


class _pulled:
    """``batches`` pulled by a background thread, started now, up to ``depth`` ahead; an
    iterator whose ``close()`` stops the thread (also when it was never read from).

    Ray's ``streaming_split`` couples the ranks: blocks are dealt to the split with the
    fewest rows, and the stream stalls while one rank's queue is full. A rank waiting at the
    equal-steps vote (or in a DDP all-reduce) must keep taking its share, or a rank still
    gathering rows for its next (bucketed) batch would wait for it forever."""

    def __init__(self, batches: Iterator, depth: int):
        self.q: "queue.Queue" = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.done = False
        threading.Thread(target=self._pull, args=(batches,), name="specstream-pull", daemon=True).start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _pull(self, batches) -> None:
        try:
            for b in batches:
                if not self._put(b):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self):
        if self.done:
            raise StopIteration
        item = self.q.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self.done = True
        self.stop.set()


def stream_data_config():
    """A Ray Train ``DataConfig`` that splits each dataset across the workers without
    truncating it (``streaming_split(equal=False)``): Ray's default ``equal=True`` drops the
    rows past an equal count, and they would show in the report as read but never delivered.
    :class:`TrainStream` equalises the steps instead."""
    from ray.train import DataConfig

    class StreamDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            output = [{} for _ in range(world_size)]
            split = set(datasets) if self._datasets_to_split == "all" else set(self._datasets_to_split)
            hints = worker_node_ids if self._enable_shard_locality else None
            for name, ds in datasets.items():
                if ds.name is None:
                    ds.set_name(name)
                ds = ds.copy(ds)
                ds.context.execution_options = self._resolve_execution_options(name)
                if name in split:
                    for i, piece in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                        output[i][name] = piece
                else:
                    for i in range(world_size):
                        output[i][name] = ds.iterator()
            return output

    return StreamDataConfig()
