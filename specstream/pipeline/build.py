"""Building the pipeline: the Ray Dataset of a config, its ledger, and the checks before it runs.

Imported by ``specstream.pipeline`` on first use (``build_pipeline`` and friends).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Dict, List

import ray

from ..config import PipelineConfig, load_config
from ..resume import fingerprint, load_state
from ..io.samples import ReaderOptions
from ..io.shards import Storage, expand_shards, shard_sizes
from .datasource import ShardDatasource
from .plan import ReadPlan, SourceShards
from .readtask import _test_fault
from .ledger import Ledger, LedgerSink, write_report
from .stages import DecodeStage, FeaturizeStage, retain_freed_memory, storage_of

storage_from_config = storage_of  # the S3/local Storage a config's source names


def check_banks(cfg: PipelineConfig, storage: Storage) -> None:
    """Every bank the augmentation names exists and its first clip decodes: a missing or
    empty bank is a configuration error here, in the driver, not a crash in an actor."""
    from ..augment import BankError, build_policy
    from ..config import ConfigError
    from ..io.banks import check_bank

    for op in build_policy(cfg.augment).ops:
        if hasattr(op, "bind"):
            try:
                check_bank(op.bank, storage)
            except BankError as e:
                raise ConfigError(f"augment ({op.name}): {e}") from None


_STAGES: Dict[tuple, Any] = {}


class _PerProcess:
    """Picklable stage callable for Ray tasks: builds the stage once per worker process
    (and config) and reuses it for every later batch there."""

    def __init__(self, stage_cls, config: PipelineConfig, sink):
        self.stage_cls, self.config, self.sink = stage_cls, config, sink
        self.key = (stage_cls.__name__, json.dumps(config.to_dict(), sort_keys=True, default=str))

    def stage(self):
        stage = _STAGES.get(self.key)
        if stage is None:
            if issubclass(self.stage_cls, FeaturizeStage) and self.config.actors.retain_freed_memory:
                retain_freed_memory()
            stage = _STAGES[self.key] = self.stage_cls(self.config, self.sink)
        return stage

    def __call__(self, batch):
        return self.stage()(batch)


def _prestart(stages: List[_PerProcess]) -> tuple:
    """Ray task body, sent with the read tasks' resources when the pipeline is built: a
    worker process that will run read tasks imports what they import (Ray Data's task
    code, the reader, torch) and builds the stage objects before the first pass needs
    them. Returns (process id, None) or (process id, the error): a stage that cannot be
    built fails again, with its error, in the read task."""
    import os

    try:
        import ray.data._internal.execution.operators.map_operator  # noqa: F401 - the read task's body

        from . import datasource  # noqa: F401 - the read function's module

        for s in stages:
            s.stage()
    except Exception as e:  # noqa: BLE001 - reported by the read task that meets it
        return os.getpid(), f"{type(e).__name__}: {e}"
    return os.getpid(), None


class FeaturizeActor(FeaturizeStage):
    """The featurize stage as a Ray Data actor: records the node it runs on in the ledger.
    Test hook (not configuration, see ``readtask._test_fault``): a file ``featurize-exit``
    reading ``actor N`` makes the first actor to reach its N-th batch exit its process, as
    a crash would (Ray restarts the actor and retries the batch)."""

    def __init__(self, config, sink=None, ledger=None):
        super().__init__(config, sink)
        if self.cfg.actors.retain_freed_memory:
            retain_freed_memory()
        self._batches = 0
        if ledger is not None:
            ray.get(ledger.record_node.remote("featurize", ray.get_runtime_context().get_node_id()))

    def __call__(self, batch):
        self._batches += 1
        _test_fault("featurize", "actor", self._batches)
        return super().__call__(batch)


@dataclass
class Pipeline:
    config: PipelineConfig
    shards: List[str]
    dataset: "ray.data.Dataset"
    ledger: Any  # the Ledger actor handle
    prestarted: list = dataclasses.field(default_factory=list)  # refs of the prestart tasks (decode.prestart)
    final: Any = None  # the report close() took

    def report(self) -> dict:
        """Per-shard reconciliation of samples read, delivered and quarantined."""
        return ray.get(self.ledger.report.remote())

    def write_report(self, path: str) -> dict:
        report = self.report()
        write_report(report, path)
        return report

    def close(self) -> dict:
        """The final report, then the ledger actor is stopped (its process freed). A driver
        that builds many pipelines (an experiment, a sweep) closes each when done with it;
        the dataset cannot be iterated after this. Closing again returns the same report."""
        if self.final is None:
            self.final = self.report()
            ray.kill(self.ledger)
        return self.final


def init_ray(verbose: bool = False, address=None) -> None:
    """Start or join Ray for a command-line tool or job script. Unless ``verbose``, Ray's own
    messages stay in its log files (``/tmp/ray/session_latest/logs``): its INFO and WARNING
    lines, what its workers and Ray Train's controller print, Ray Data's progress bars (the
    tool shows its own progress). Errors still raise. ``address``: a cluster to join; by
    default ``RAY_ADDRESS`` when set (under ``ray job submit``), else a new local instance."""
    import logging
    import os

    if not verbose:
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or "local"
    kw = {"include_dashboard": False} if address == "local" else {}
    ray.init(address=address, log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR,
             **kw)
    if not verbose:
        ray.data.DataContext.get_current().enable_progress_bars = False


def check_resources(cfg: PipelineConfig, reserved_cpus: float = 0.0, reserved_gpus: float = 0.0) -> None:
    """Fail early, with numbers, when the featurize actors plus one decode task cannot fit
    the cluster next to what else is reserved there (e.g. Ray Train workers): otherwise
    Ray Data waits forever for a CPU that never frees up."""
    from ..config import ConfigError

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    a = cfg.actors
    actors = actor_layout(cfg)
    need_cpu = (a.count * a.num_cpus if actors else 0.0) + cfg.decode.num_cpus + reserved_cpus
    need_gpu = a.count * a.num_gpus + reserved_gpus
    if need_cpu > cpus + 1e-9:
        raise ConfigError(
            f"resources: {a.count if actors else 0} featurize actor(s) x {a.num_cpus} CPU + one decode task x "
            f"{cfg.decode.num_cpus} CPU + {reserved_cpus} CPU reserved elsewhere = {need_cpu} CPUs, "
            f"but the cluster has {cpus}: lower actors.num_cpus / decode.num_cpus (fractions are fine)")
    if need_gpu > gpus + 1e-9:
        raise ConfigError(f"resources: actors need {need_gpu} GPUs (with {reserved_gpus} reserved "
                          f"elsewhere) but the cluster has {gpus}")


def build_pipeline(config, reserved_cpus: float = 0.0, reserved_gpus: float = 0.0,
                   check_fit: bool = True, resume=None) -> Pipeline:
    """Build the streaming Ray Dataset for a config (dict, YAML path or PipelineConfig).

    Rows carry ``key``, ``shard``, ``features``, ``length`` and ``target``. Nothing runs
    until the dataset is consumed. Starts Ray (``ray.init()``) if it is not running.
    ``reserved_cpus``/``reserved_gpus``: what the consumers (Ray Train workers) will hold,
    so that a layout that cannot run fails here instead of stalling. On an autoscaling
    cluster whose nodes are not up yet, pass ``check_fit=False``.
    ``resume``: a stream state (dict or JSON path, from ``TrainStream.state_dict()``): the
    first pass reads the rest of that epoch, skipping the samples it records as consumed on
    the tar headers (never decoded or featurized); later passes are whole epochs. A state of
    another config or corpus is a ConfigError.
    """
    cfg = load_config(config)
    storage = storage_from_config(cfg)
    shard_sets = []
    for i, src in enumerate(cfg.all_sources()):
        st = storage_of(cfg, src)
        urls = expand_shards(src.shards, st)
        shard_sets.append(SourceShards(src.name or "default", urls, st, src.weight))
    urls = shard_sets[0].urls
    check_banks(cfg, storage)
    if not ray.is_initialized():
        ray.init()
    if check_fit:
        check_resources(cfg, reserved_cpus, reserved_gpus)
    sizes = {}
    for s in shard_sets:
        sizes.update(zip(s.urls, shard_sizes(s.urls, s.storage)))
    names = {u: s.name for s in shard_sets for u in s.urls} if len(shard_sets) > 1 else None
    fp = fingerprint(cfg.to_dict(), [u for s in shard_sets for u in s.urls])
    state = None
    if resume is not None:
        state = load_state(resume, fp)
        # the resumed epoch's draws: each sample's augmentation as it would have been
        cfg = dataclasses.replace(cfg, epoch=state["epoch"])
    ledger = Ledger.remote(urls, [sizes[u] for u in urls], names, fp,
                           {k: state[k] for k in ("epoch", "consumed", "pending")} if state else None)
    sink = LedgerSink(ledger)
    options = ReaderOptions(max_member_bytes=int(cfg.source.max_member_mb * (1 << 20)),
                            block_rows=cfg.source.block_rows)
    sm = cfg.sampling
    plan = ReadPlan(shard_sets, interleave=sm.interleave, shuffle_buffer=sm.shuffle_buffer, seed=cfg.seed,
                    shuffle_shards=cfg.source.shuffle_shards, sizes=sizes,
                    skip=state["consumed"] if state else {}, skip_epoch=state["epoch"] if state else None,
                    pending=state["pending"] if state else {})
    decode = _PerProcess(DecodeStage, cfg, sink)
    source = ShardDatasource(plan, options, ledger, decode=decode, base_epoch=cfg.epoch)
    read_res = dict(cfg.decode.resources) or None
    featurize = None if actor_layout(cfg) else _PerProcess(FeaturizeStage, cfg, sink)
    warming = prestart(cfg, plan.tasks, [st for st in (decode, featurize) if st is not None], read_res)
    ds = ray.data.read_datasource(source, override_num_blocks=plan.tasks,
                                  num_cpus=cfg.decode.num_cpus, resources=read_res)
    ds.context.target_max_block_size = output_block_bytes(cfg)
    a = cfg.actors
    if featurize is None:
        concurrency = a.count if a.max_count is None else (a.count, a.max_count)
        # Ray Data restarts pool actors (max_restarts=-1) and retries their batches by default
        extra = {} if a.max_restarts == -1 else {"max_restarts": a.max_restarts}
        ds = ds.map_batches(FeaturizeActor, batch_size=a.batch_size, batch_format="numpy",
                            fn_constructor_kwargs={"config": cfg, "sink": sink, "ledger": ledger},
                            concurrency=concurrency, num_gpus=a.num_gpus, num_cpus=a.num_cpus,
                            resources=dict(a.resources) or None, **extra)
    else:
        # Same resources as the read task and whole blocks as batches (Ray does not fuse a read with a
        # fixed-batch-size map), so that Ray fuses read+decode+featurize into one task
        # per shard. Featurize batches are then the reader's blocks (source.block_rows).
        ds = ds.map_batches(featurize, batch_size=None, batch_format="numpy", num_cpus=cfg.decode.num_cpus,
                            resources=read_res)
    return Pipeline(cfg, urls, ds, ledger, warming)


def actor_layout(cfg: PipelineConfig) -> bool:
    """Featurize on an actor pool (else in the read tasks)."""
    a = cfg.actors
    return a.compute == "actors" or (a.compute == "auto" and a.num_gpus > 0)


def prestart(cfg: PipelineConfig, read_tasks: int, stages: List[_PerProcess], resources) -> list:
    """Start, without waiting, one :func:`_prestart` task per read task that can run at
    once (the cluster's CPUs over ``decode.num_cpus``, at most the read tasks): Ray keeps
    those worker processes for the read tasks that follow. Returns their object refs."""
    if not cfg.decode.prestart:
        return []
    cpus = ray.cluster_resources().get("CPU", 0.0)
    n = min(read_tasks, int(cpus / cfg.decode.num_cpus) if cfg.decode.num_cpus > 0 else read_tasks, 64)
    task = ray.remote(_prestart).options(num_cpus=cfg.decode.num_cpus, resources=resources, max_retries=0)
    return [task.remote(stages) for _ in range(max(0, n))]


def output_block_bytes(cfg: PipelineConfig) -> int:
    """The Ray Data block size target for this pipeline: a little under one featurized block
    (``source.block_rows`` rows of log-mel; full mode assumes ``decode.clip_seconds`` per row).
    Ray's map stages hold their output until it passes the target (128 MiB by default): a read
    task of many shards, or of big ones, would otherwise send nothing until a large part of
    its work was done, and the time to the first batch would grow with the shard size."""
    frames = cfg.decode.clip_seconds * cfg.decode.sample_rate / cfg.features.hop_length + 1
    return max(1 << 20, int(0.9 * cfg.source.block_rows * cfg.features.n_mels * frames * 4))


def build_dataset(config) -> "ray.data.Dataset":
    """The pipeline's Ray Dataset alone (use :func:`build_pipeline` for the ledger/report)."""
    return build_pipeline(config).dataset
