"""Logged parameters back into replayable ones: per-row records (``AugmentResult.params_for``,
the pipeline's ``aug_params`` JSON) -> a batch's params, and for mixing ops the rows a
row's replay needs (its partners, found by key id)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from ..functional.random import key_ids as _key_ids


def params_from_rows(rows: Sequence[Dict[str, Dict[str, Any]]], device=None, keys=None,
                     key_ids=None) -> List[Dict[str, torch.Tensor]]:
    """Recorded parameters of a batch from per-row records (``AugmentResult.params_for``,
    or the ``aug_params`` JSON of delivered rows): the inverse of ``params_for``.

    Mixing ops (mixup, overlay) record their partner as an index into the batch they
    saw, its key id (``partner_id``) and the row's own (``key_id``): each partner is
    found among the given rows by key id, so any subset in any order replays as long as
    every row in it that a mixing op mixed has its partner in it too (a ValueError names
    a missing one; :func:`replay_set` lists what a row needs). ``keys`` (or ``key_ids``):
    the rows' sample keys, for records without ``key_id`` (logged before it was
    recorded: without either, the rows must be the whole batch, in order)."""
    if not rows:
        raise ValueError("params_from_rows: no rows")
    ids = None
    if keys is not None and key_ids is not None:
        raise ValueError("params_from_rows: give keys or key_ids, not both")
    if keys is not None or key_ids is not None:
        ids = [int(i) for i in (_key_ids(list(keys)) if key_ids is None else key_ids)]
        if len(ids) != len(rows):
            raise ValueError(f"params_from_rows: {len(rows)} rows, {len(ids)} keys")
    slots = list(rows[0])
    out = []
    for slot in slots:
        p = {}
        for k in list(rows[0][slot]):
            missing = [i for i, r in enumerate(rows) if k not in r.get(slot, {})]
            if missing:
                raise ValueError(f"params_from_rows: row {missing[0]} has no {slot} {k!r} (logged with "
                                 f"max_values? replay needs every field)")
            vals = [r[slot][k] for r in rows]
            dtype = torch.bool if isinstance(vals[0], bool) or (isinstance(vals[0], list) and vals[0]
                                                              and isinstance(vals[0][0], bool)) else None
            t = torch.tensor(vals, dtype=dtype, device=device)
            if t.dtype == torch.float64:
                t = t.to(torch.float32)
            p[k] = t
        p["__name__"] = slot.split(":", 1)[1]
        if "partner" in p:
            p["partner"] = _partner_rows(slot, p, ids, device)
        out.append(p)
    return out

def replay_set(rows: Sequence[Dict[str, Dict[str, Any]]], i: int) -> List[int]:
    """The positions among ``rows`` (one logged batch's per-row records, each mixing op
    with its ``key_id``) that replaying row i needs: i, and for every row of the set a
    mixing op mixed (active, partner not itself), that partner, and so on. Replay
    ``[rows[k] for k in replay_set(rows, i)]`` (in any order) to get row i back."""
    where: Dict[int, int] = {}
    for k, r in enumerate(rows):
        for p in r.values():
            if "partner_id" in p:
                if "key_id" not in p:
                    raise ValueError("replay_set: records without key_id (logged before it was recorded)")
                if where.setdefault(int(p["key_id"]), k) != k:
                    raise ValueError(f"replay_set: rows {where[int(p['key_id'])]} and {k} hold the same key "
                                     f"(key id {p['key_id']}): partners cannot be told apart by key; replay "
                                     f"the whole batch in its logged order")
    need, grow = set(), {i}
    while grow:
        need |= grow
        nxt = set()
        for k in grow:
            for p in rows[k].values():
                if "partner_id" in p and p.get("active", True) and int(p["partner_id"]) != int(p["key_id"]):
                    if int(p["partner_id"]) not in where:
                        raise ValueError(f"replay_set: row {k}'s partner (key id {p['partner_id']}) is not "
                                         f"among the rows")
                    nxt.add(where[int(p["partner_id"])])
        grow = nxt - need
    return sorted(need)


def _row_ids(p: Dict[str, torch.Tensor], ids: Optional[List[int]]) -> Optional[Dict[int, int]]:
    """key id -> row position, from the caller's ids or the mixing op's logged ``key_id``;
    None when neither is there, or when logged ids repeat (a batch holding a key twice:
    its partners are batch indices)."""
    explicit = ids is not None
    if ids is None and "key_id" in p:
        ids = [int(k) for k in p["key_id"].tolist()]
    if ids is None:
        return None
    where: Dict[int, int] = {}
    for i, k in enumerate(ids):
        if where.setdefault(k, i) != i:
            if explicit:
                raise ValueError(f"params_from_rows: rows {where[k]} and {i} have the same key id {k}")
            return None
    return where


def _partner_rows(slot: str, p: Dict[str, torch.Tensor], ids: Optional[List[int]], device) -> torch.Tensor:
    """A mixing op's logged partners as indices into the rows being replayed: found by key
    id (the caller's ``ids`` or the logged own ids), or else the logged batch indices,
    checked."""
    B = len(p["partner"])
    active = p["active"].tolist() if "active" in p else [True] * B
    where = _row_ids(p, ids)
    if where is None:
        partner = p["partner"].tolist()
        bad = [i for i, j in enumerate(partner) if not 0 <= j < B]
        if bad:
            i = bad[0]
            raise ValueError(f"params_from_rows: row {i}'s {slot} partner is row {partner[i]} of the "
                             f"batch it was logged in, and {B} rows were given: pass the rows' keys (keys=) to "
                             f"replay a subset that holds each partner")
        if "key_id" in p:  # logged ids that repeat (a key twice in the batch): batch indices, checked
            own, pid = p["key_id"].tolist(), p["partner_id"].tolist()
            wrong = [i for i in range(B) if active[i] and own[partner[i]] != pid[i]]
            if wrong:
                raise ValueError(f"params_from_rows: row {wrong[0]}'s {slot} partner is row {partner[wrong[0]]} "
                                 f"of the batch it was logged in, which holds another key here: these rows hold "
                                 f"a key twice, so give the whole batch in its logged order")
        return p["partner"]
    out = []
    for i, pid in enumerate(p["partner_id"].tolist()):
        if pid in where:
            out.append(where[pid])
        elif not active[i]:
            out.append(i)  # not mixed: its partner is never read
        else:
            raise ValueError(f"params_from_rows: row {i}'s {slot} partner (key id {pid}) is not among the rows "
                             f"given: replay it together with its partner's row")
    return torch.tensor(out, dtype=torch.int64, device=device)
