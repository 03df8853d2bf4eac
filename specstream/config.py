"""Pipeline configuration: dataclasses built from a dict or a YAML file (``yaml.safe_load``).

Unknown keys and wrong types are errors that name the key (``decode.sample_rate: expected
int, got str``), raised when the config is loaded, not inside a Ray worker.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import yaml

from .features import MelConfig


from .errors import ConfigError  # noqa: E402,F401 - defined in a leaf module, raised by every layer


@dataclass
class SourceConfig:
    shards: Union[str, List[str]] = ""
    # with several sources (``source`` given as a list): the source's name in the report and its share
    # of the samples drawn (weights are normalised); the first source defines the epoch
    name: Optional[str] = None
    weight: float = 1.0
    endpoint_url: Optional[str] = None  # S3-compatible endpoint, e.g. http://127.0.0.1:9000
    region: Optional[str] = None
    buffer_mb: int = 8
    # a remote open or read that fails is retried (reads resume at the same byte) until failures in
    # a row have lasted retry_budget_s seconds; backoff doubles from retry_backoff up to retry_backoff_max
    retry_budget_s: float = 60.0
    retry_backoff: float = 0.2
    retry_backoff_max: float = 5.0
    read_retries: Optional[int] = None  # optional cap on attempts in a row, besides the time budget
    max_member_mb: float = 256.0  # members larger than this are quarantined unread
    block_rows: int = 256  # samples per Arrow block emitted by the reader
    shuffle_shards: bool = False  # seeded per-epoch permutation of the shard order


@dataclass
class DecodeConfig:
    sample_rate: int = 16000
    mode: str = "fixed"  # fixed: crop/pad to clip_seconds; full: keep the whole clip
    clip_seconds: float = 1.0
    crop: str = "start"  # start | center | random (random is seeded by sample key)
    max_seconds: float = 600.0  # clips longer than this are quarantined before decoding
    num_cpus: float = 1.0
    # start the read+decode tasks' worker processes when the pipeline is built (imports, stage
    # objects), so the first batch does not wait for them
    prestart: bool = True
    # custom Ray resources each read+decode task asks for, to pin it to some nodes
    # (e.g. {cpu_node: 0.01} with nodes started as `ray start --resources '{"cpu_node": 100}'`)
    resources: Dict[str, float] = field(default_factory=dict)


@dataclass
class LabelsConfig:
    field: str = "cls"  # cls | txt | json:<name>
    vocab: Optional[List[str]] = None
    vocab_file: Optional[str] = None
    num_classes: Optional[int] = None
    multi_label: bool = False
    required: bool = True  # a sample without a usable label is quarantined
    # frame-level labels: json:<name> holding [[start_s, end_s, label], ...] (same vocabulary);
    # delivered as frame_target [T, C] multi-hot on the feature frames, moved by the time ops
    frame_field: Optional[str] = None
    # sequence targets: the transcript in ``field`` (txt or json:<name>) becomes ``tokens`` [U] with
    # char | vocab:FILE | sentencepiece:MODEL (id 0 is the CTC blank and padding); no class vocabulary then
    tokenizer: Optional[str] = None


@dataclass
class ActorsConfig:
    # auto: an actor pool when num_gpus > 0, else Ray tasks (CPU tasks reuse warm worker
    # processes and fuse with read+decode; an actor pool is started anew on every pass)
    compute: str = "auto"  # auto | actors | tasks
    count: int = 1  # featurize actors (an int, or min and max for autoscaling)
    max_count: Optional[int] = None
    num_gpus: float = 0.0  # per actor; fractional shares a GPU
    num_cpus: float = 1.0
    batch_size: int = 64
    device: Optional[str] = None  # default: cuda when the actor holds a GPU, else cpu
    resources: Dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor
    max_restarts: int = -1  # a featurize actor that dies is restarted (its batch is retried)
    # the Ray worker processes that featurize keep freed heap memory for the next batch instead of
    # handing it back to the OS and faulting it in again (glibc mallopt; up to 1 GiB stays resident)
    retain_freed_memory: bool = True


@dataclass
class DeliverConfig:
    batch_size: int = 64
    prefetch_batches: int = 2
    drop_last: bool = False


@dataclass
class BucketingConfig:
    """Duration bucketing (``decode.mode: full``): a batch holds samples of one duration bucket,
    as many as fit ``max_duration_s`` of *padded* audio (batch size x its longest sample), so
    the frames a trainer must hold per batch are bounded by max_duration_s / hop (a sample
    longer than max_duration_s alone, up to decode.max_seconds, makes a batch of one)."""
    max_duration_s: float = 200.0
    num_buckets: int = 10
    buffer: int = 1000  # samples whose durations estimate the boundaries (when none are given)
    # lhotse's quadratic_duration: a sample of d seconds costs d + d**2 / q (attention's quadratic memory)
    quadratic_duration: Optional[float] = None
    boundaries_s: Optional[List[float]] = None  # bucket edges in seconds (num_buckets - 1 of them)
    max_batch_size: Optional[int] = None  # an optional cap on samples per batch (very short clips)


@dataclass
class SamplingConfig:
    """Which samples go together: a seeded shuffle buffer over several shards read at once per
    read task (before featurizing, so mixup partners are shuffled neighbours), duration
    bucketing, and equal steps on every rank."""
    shuffle_buffer: int = 0  # samples held per read task; 0: file order
    interleave: int = 1  # shards read at once per read task
    bucketing: Optional[BucketingConfig] = None
    # with torch.distributed initialised (Ray Train), every rank yields the same number of batches per
    # epoch; what a rank holds past the common count is carried into its next epoch (and reported)
    equal_steps: bool = True


@dataclass
class PipelineConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    # several sources drawn by weight (``source:`` given as a list in YAML): source is then sources[0]
    sources: List[SourceConfig] = field(default_factory=list)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    features: MelConfig = field(default_factory=MelConfig)
    # policy spec for specstream.augment: null (none), a preset name (LB, LD, SM, SS,
    # adaptive), or {preset: ..., ops: [{op: freq_mask, max_width: 27, count: 2, p: 1.0}, ...]}
    augment: Optional[Any] = None
    log_params: bool = False  # add each row's augmentation parameters as a JSON column
    actors: ActorsConfig = field(default_factory=ActorsConfig)
    deliver: DeliverConfig = field(default_factory=DeliverConfig)
    seed: int = 0
    epoch: int = 0

    def validate(self) -> "PipelineConfig":
        s, d, lab, a = self.source, self.decode, self.labels, self.actors
        if not s.shards:
            raise ConfigError("source.shards: required (a path, glob, brace pattern or s3:// URL)")
        if d.mode not in ("fixed", "full"):
            raise ConfigError("decode.mode: must be 'fixed' or 'full'")
        if d.crop not in ("start", "center", "random"):
            raise ConfigError("decode.crop: must be 'start', 'center' or 'random'")
        if d.sample_rate <= 0 or d.clip_seconds <= 0 or d.max_seconds <= 0:
            raise ConfigError("decode: sample_rate, clip_seconds and max_seconds must be positive")
        if lab.tokenizer is not None:
            if lab.field == "cls":
                raise ConfigError("labels.tokenizer: tokens come from a transcript: set labels.field to txt or "
                                  "json:<name>")
            if any(x is not None for x in (lab.vocab, lab.vocab_file, lab.num_classes)) or lab.multi_label \
                    or lab.frame_field is not None:
                raise ConfigError("labels.tokenizer: sequence targets take no class vocabulary (vocab, vocab_file, "
                                  "num_classes), multi_label or frame_field")
            from .tokenizers import build_tokenizer

            build_tokenizer(lab.tokenizer)
        elif sum(x is not None for x in (lab.vocab, lab.vocab_file, lab.num_classes)) != 1:
            raise ConfigError("labels: give exactly one of vocab, vocab_file or num_classes")
        if lab.vocab_file is not None and not os.path.exists(lab.vocab_file):
            raise ConfigError(f"labels.vocab_file: {lab.vocab_file!r} does not exist")
        if not (lab.field in ("cls", "txt") or lab.field.startswith("json:")):
            raise ConfigError("labels.field: must be cls, txt or json:<name>")
        if lab.frame_field is not None and not lab.frame_field.startswith("json:"):
            raise ConfigError("labels.frame_field: must be json:<name> (a list of [start_s, end_s, label])")
        if a.compute not in ("auto", "actors", "tasks"):
            raise ConfigError("actors.compute: must be 'auto', 'actors' or 'tasks'")
        if a.compute == "tasks" and a.num_gpus > 0:
            raise ConfigError("actors.compute: 'tasks' cannot hold GPUs; use 'actors' (or 'auto')")
        if a.count < 1 or (a.max_count is not None and a.max_count < a.count):
            raise ConfigError("actors: count must be >= 1 and max_count >= count")
        for where, res in (("decode.resources", d.resources), ("actors.resources", a.resources)):
            for k, v in res.items():
                if k in ("CPU", "GPU", "memory") or v <= 0:
                    raise ConfigError(f"{where}.{k}: custom resources only (use num_cpus/num_gpus), "
                                      f"and amounts > 0")
        if s.retry_budget_s < 0 or s.retry_backoff < 0 or s.retry_backoff_max < s.retry_backoff:
            raise ConfigError("source: retry_budget_s and retry_backoff must be >= 0 and retry_backoff_max "
                              ">= retry_backoff")
        if s.read_retries is not None and s.read_retries < 0:
            raise ConfigError("source.read_retries: must be >= 0 (or null: only the time budget)")
        if a.num_gpus < 0 or a.batch_size < 1 or self.deliver.batch_size < 1:
            raise ConfigError("actors/deliver: num_gpus >= 0 and batch sizes >= 1")
        self._validate_sampling()
        if self.features.sample_rate != d.sample_rate:
            raise ConfigError(f"features.sample_rate ({self.features.sample_rate}) must equal "
                              f"decode.sample_rate ({d.sample_rate}); leave it out to inherit")
        try:
            self.features.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.augment is not None:
            from .augment import build_policy

            try:
                policy = build_policy(self.augment).check(self.decode.sample_rate)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"augment: {e}") from None
            if self.sequence_targets and sum(op.name == "mixup" for op in policy.ops) > 1:
                raise ConfigError("augment: with sequence targets (labels.tokenizer) at most one mixup op: each row "
                                  "carries one partner transcript")
        return self

    def _validate_sampling(self) -> None:
        sm = self.sampling
        if sm.shuffle_buffer < 0 or sm.interleave < 1:
            raise ConfigError("sampling: shuffle_buffer must be >= 0 and interleave >= 1")
        srcs = self.all_sources()
        names = [s.name for s in srcs]
        for i, s in enumerate(srcs):
            if not s.shards:
                raise ConfigError(f"source[{i}].shards: required")
            if not s.weight > 0:
                raise ConfigError(f"source[{i}].weight: must be > 0, got {s.weight}")
        if len(srcs) > 1 and (None in names or len(set(names)) != len(names)):
            raise ConfigError("source: with several sources each needs a distinct name")
        for i, s in enumerate(srcs[1:], 1):  # storage keys are per source; the reader's apply to all
            for key in ("block_rows", "max_member_mb", "shuffle_shards"):
                if getattr(s, key) not in (getattr(srcs[0], key), getattr(SourceConfig, key)):
                    raise ConfigError(f"source[{i}].{key}: the reader's settings come from the first source and "
                                      f"apply to all; set {key} there")
        b = sm.bucketing
        if b is None:
            return
        if self.decode.mode != "full":
            raise ConfigError("sampling.bucketing: needs decode.mode: full (fixed mode makes every clip one length)")
        if not b.max_duration_s > 0 or b.num_buckets < 1 or b.buffer < 1 or (b.max_batch_size or 1) < 1:
            raise ConfigError("sampling.bucketing: max_duration_s > 0, num_buckets >= 1, buffer >= 1 and "
                              "max_batch_size >= 1")
        if b.quadratic_duration is not None and not b.quadratic_duration > 0:
            raise ConfigError("sampling.bucketing.quadratic_duration: must be > 0 (seconds) or null")
        if b.boundaries_s is not None:
            e = b.boundaries_s
            if len(e) != b.num_buckets - 1 or any(not x > 0 for x in e) or any(x >= y for x, y in zip(e, e[1:])):
                raise ConfigError(f"sampling.bucketing.boundaries_s: {b.num_buckets - 1} increasing positive edges "
                                  f"(num_buckets - 1), got {e}")

    def all_sources(self) -> List[SourceConfig]:
        """Every source, the first (which defines the epoch) first."""
        return list(self.sources) if self.sources else [self.source]

    @property
    def sequence_targets(self) -> bool:
        return self.labels.tokenizer is not None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(t) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _coerce(value, tp, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # Optional[X]: X's own message names the element that is wrong
            raise errors[0]
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, "
                          f"got {type(value).__name__}")
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    hint = ""
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads yes/no/on/off as booleans
        hint = "; quote it (YAML reads yes/no/on/off as true/false)"
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} ({value!r}){hint}")


def _build(cls, data, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000


def load_yaml(path: Union[str, os.PathLike], what: str = "config"):
    """``yaml.safe_load`` of a file, bounded: a file over 1 MiB, or one whose aliases expand
    to more than 100,000 values (a "billion laughs" alias bomb), is a ConfigError."""
    with open(path, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {what} file is over {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a valid YAML {what}: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: {what} nests too deeply to be a configuration; refused") from None
    bounded_size(data, f"{path}")
    return data


def bounded_size(data, where: str, limit: int = MAX_CONFIG_VALUES) -> None:
    """Raise ConfigError when ``data`` (YAML aliases followed, so shared nodes count once
    per reference) holds more than ``limit`` values; stops counting at the limit."""
    count = 0
    stack = [data]
    while stack:
        x = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(f"{where}: expands to more than {limit:,} values (a YAML alias bomb?); refused")
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


def apply_overrides(data: dict, overrides: List[str]) -> dict:
    """``key.sub=value`` overrides (``--set`` on every command line), in place: the value is
    parsed as YAML (safely); list items by index (``augment.ops.1.bank=...``)."""
    for item in overrides or []:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {path}: the value is not YAML ({str(e).splitlines()[0]})") from None
        node = data
        keys = path.split(".")
        for n, k in enumerate(keys):
            last = n == len(keys) - 1
            if isinstance(node, list):
                try:
                    idx = int(k)
                    node[idx]
                except (ValueError, IndexError):
                    raise ConfigError(f"--set {path}: {k!r} is not an index of the list at "
                                      f"{'.'.join(keys[:n])}") from None
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
                continue
            if last:
                node[k] = value
            else:
                if node.get(k) is not None and not isinstance(node[k], (dict, list)):
                    raise ConfigError(f"--set {path}: {'.'.join(keys[:n + 1])} is a value "
                                      f"({node[k]!r}), not a mapping or a list")
                if node.get(k) is None:
                    node[k] = {}
                node = node[k]
    return data


def config_data(path: Union[str, os.PathLike], overrides: List[str]) -> dict:
    """A config file's data with ``--set`` overrides applied (validated once, by
    :func:`load_config`, where the pipeline is built)."""
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top of the config, got {type(data).__name__}")
    return apply_overrides(data, overrides)


def load_config(config: Union[str, os.PathLike, Dict[str, Any], PipelineConfig]) -> PipelineConfig:
    """A validated PipelineConfig from a dict or a YAML path (parsed and validated here, once);
    a PipelineConfig is returned as it is. The pipeline hands its stages, actors and trainers
    the PipelineConfig it validated, so nothing downstream parses the config again."""
    if isinstance(config, PipelineConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        data = load_yaml(config)
    else:
        data = dict(config)
    data = dict(data or {})
    feats = dict(data.get("features") or {})
    decode = data.get("decode") or {}
    if isinstance(decode, dict) and "sample_rate" in decode:
        feats.setdefault("sample_rate", decode["sample_rate"])
    data["features"] = feats
    src = data.get("source")
    if isinstance(src, (list, tuple)):  # several weighted sources: the first defines the epoch
        if not src:
            raise ConfigError("source: an empty list; give one source or a list of {name, shards, weight}")
        if data.get("sources"):
            raise ConfigError("source: a list of sources, and sources besides it; give one")
        data["sources"] = list(src)
        data["source"] = src[0]
    cfg = _build(PipelineConfig, data, "")
    if cfg.sources and cfg.source != cfg.sources[0]:
        raise ConfigError("source and sources[0] differ; give the sources as one list under source:")
    return cfg.validate()
