"""The stream's state: which samples of which epoch the trainers have consumed, compactly.

A sample is named by (shard, index): its ordinal among the samples of its shard, counted on
the tar headers (the same on every read of the shard). Consumed indices are kept as sorted,
merged half-open ranges per shard, so a state is O(shards + gaps), not O(samples).

The state is JSON::

    {"format": "specstream-stream-state", "version": 2, "fingerprint": "...", "seed": 0,
     "epoch": 3, "consumed": {"s3://bucket/shard-000001.tar": [[0, 118], [120, 400]], ...},
     "samples": 12345, "pending": {"2": {"s3://bucket/shard-000007.tar": [[398, 400]]}}}

``pending`` (version 2, absent when empty): samples of earlier epochs not yet consumed that
the trainers held when the state was taken: rows carried past an epoch's end (equal steps,
``drop_last``). A resumed run reads them again (with their own epoch's augmentation) in its
first pass. Version 1 states (no ``pending``) are read too.

``fingerprint`` hashes what decides the samples and their augmentation (the shard list, seed,
decode, labels, features, augmentation, sampling), not the cluster layout (actors, trainer
workers, batch size): a state restores on any number of workers and nodes.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .errors import ConfigError

FORMAT = "specstream-stream-state"
VERSION = 2
READS = (1, 2)
Ranges = List[List[int]]


def add_indices(ranges: Ranges, indices: Iterable[int]) -> Ranges:
    """``ranges`` with ``indices`` added, as sorted, merged half-open [start, end) ranges."""
    points = sorted(set(int(i) for i in indices))
    merged = [list(r) for r in ranges] + [[i, i + 1] for i in points]
    return merge(merged)


def merge(ranges: Iterable[Sequence[int]]) -> Ranges:
    out: Ranges = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def contains(ranges: Sequence[Sequence[int]], i: int) -> bool:
    """Whether index ``i`` is in the sorted, merged ranges (binary search)."""
    k = bisect.bisect_right(ranges, [i, float("inf")]) - 1
    return k >= 0 and ranges[k][0] <= i < ranges[k][1]


def count(ranges: Sequence[Sequence[int]]) -> int:
    return sum(b - a for a, b in ranges)


def subtract(ranges: Sequence[Sequence[int]], minus: Sequence[Sequence[int]]) -> Ranges:
    """Sorted, merged ``ranges`` less the sorted, merged ``minus``."""
    out: Ranges = []
    j = 0
    for a, b in ranges:
        while j < len(minus) and minus[j][1] <= a:
            j += 1
        k = j
        while a < b and k < len(minus) and minus[k][0] < b:
            if minus[k][0] > a:
                out.append([a, minus[k][0]])
            a = max(a, minus[k][1])
            k += 1
        if a < b:
            out.append([a, b])
    return out


Pending = Dict[int, Dict[str, Ranges]]  # epoch -> shard -> ranges


def union_pending(*parts: Pending) -> Pending:
    out: Pending = {}
    for part in parts:
        for epoch, shards in (part or {}).items():
            mine = out.setdefault(int(epoch), {})
            for shard, r in shards.items():
                mine[shard] = merge(mine.get(shard, []) + [list(x) for x in r])
    return {e: {s: r for s, r in sh.items() if r} for e, sh in out.items() if any(sh.values())}


def subtract_pending(pending: Pending, done: Pending) -> Pending:
    out = {e: {s: subtract(r, (done or {}).get(e, {}).get(s, [])) for s, r in sh.items()}
           for e, sh in (pending or {}).items()}
    return union_pending(out)


def fingerprint(config: dict, shards: Sequence[str]) -> str:
    """What decides the samples and their augmentation, hashed: the shards, seed, decode,
    labels, features, augmentation and sampling (not actors, deliver or the epoch)."""
    keep = {k: config.get(k) for k in ("seed", "decode", "labels", "features", "augment", "sampling")}
    keep["shards"] = list(shards)
    keep["sources"] = [{k: s.get(k) for k in ("name", "weight")} for s in config.get("sources") or []]
    blob = json.dumps(keep, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def make_state(fp: str, seed: int, epoch: int, consumed: Dict[str, Ranges], pending: Optional[Pending] = None,
               **extra) -> dict:
    """A state (``extra``: fields a rank's local state carries until the ranks' are merged)."""
    consumed = {s: merge(r) for s, r in sorted(consumed.items()) if r}
    state = {"format": FORMAT, "version": VERSION, "fingerprint": fp, "seed": int(seed), "epoch": int(epoch),
             "consumed": consumed, "samples": sum(count(r) for r in consumed.values())}
    pending = union_pending(pending or {})
    if pending:
        state["pending"] = {str(e): dict(sorted(sh.items())) for e, sh in sorted(pending.items())}
    state.update(extra)
    return state


def pending_of(state: dict) -> Pending:
    return {int(e): sh for e, sh in (state.get("pending") or {}).items()}


def merge_states(states: Sequence[dict]) -> dict:
    """Ranks' states of one epoch merged: the union of what each consumed (and of what each
    holds from earlier epochs, ``pending``)."""
    states = [s for s in states if s]
    if not states:
        return {}
    fps = {s["fingerprint"] for s in states}
    if len(fps) != 1:
        raise ValueError(f"ranks' stream states differ in fingerprint: {sorted(fps)}")
    epoch = max(s["epoch"] for s in states)
    consumed: Dict[str, Ranges] = {}
    for s in states:
        if s["epoch"] != epoch:
            continue  # a rank still in an earlier epoch's tail: that epoch is complete elsewhere
        for shard, r in s["consumed"].items():
            consumed[shard] = merge(consumed.get(shard, []) + [list(x) for x in r])
    extra = {}
    if any("pending_done" in s for s in states):
        extra["pending_done"] = union_pending(*(s.get("pending_done") or {} for s in states))
    return make_state(states[0]["fingerprint"], states[0]["seed"], epoch, consumed,
                      union_pending(*(pending_of(s) for s in states)), **extra)


def load_state(state: Union[str, os.PathLike, dict], expected_fingerprint: str) -> dict:
    """A state from a dict or a JSON file, checked: ConfigError with a clear message when it
    is not a stream state, of another version, or of another config or corpus."""
    where = "resume state"
    if isinstance(state, (str, os.PathLike)):
        where = f"resume state {os.fspath(state)!r}"
        try:
            with open(state, "rb") as f:
                raw = f.read(64 << 20)
            state = json.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{where}: not a JSON stream state ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{where}: not a specstream stream state (no \"format\": \"{FORMAT}\")")
    if state.get("version") not in READS:
        raise ConfigError(f"{where}: version {state.get('version')!r}, this specstream reads versions "
                          f"{', '.join(map(str, READS))}")
    try:
        epoch = int(state["epoch"])
        consumed = {str(s): merge((int(a), int(b)) for a, b in r) for s, r in dict(state["consumed"]).items()}
        pending = {int(e): {str(s): merge((int(a), int(b)) for a, b in r) for s, r in dict(sh).items()}
                   for e, sh in dict(state.get("pending") or {}).items()}
        fp = str(state["fingerprint"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: malformed ({type(e).__name__}: {e})") from None
    ranges = [r for r in consumed.values()] + [r for sh in pending.values() for r in sh.values()]
    if any(a < 0 or b <= a for r in ranges for a, b in r):
        raise ConfigError(f"{where}: malformed (ranges must be [start, end) with 0 <= start < end)")
    if any(e >= epoch or e < 0 for e in pending):
        raise ConfigError(f"{where}: malformed (pending samples must be of epochs before {epoch})")
    if fp != expected_fingerprint:
        raise ConfigError(f"{where}: saved by a run of another config or corpus (fingerprint {fp}, this run's is "
                          f"{expected_fingerprint}): shards, seed, decode, labels, features, augment and sampling "
                          f"must be the same to resume")
    return {**state, "epoch": epoch, "consumed": consumed, "pending": pending}


def save_state(state: dict, path: Union[str, os.PathLike]) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def pairs(ranges: Sequence[Sequence[int]]) -> List[Tuple[int, int]]:
    return [(int(a), int(b)) for a, b in ranges]
