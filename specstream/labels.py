"""Labels -> targets: a class vocabulary, single-label (class index) or multi-label (multi-hot)."""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence, Union

import numpy as np


class LabelError(ValueError):
    """A sample's label is missing or not in the vocabulary."""


class LabelVocab:
    """Maps label strings to class indices.

    Built from an explicit list of class names, a vocabulary file (one name per line, or
    a JSON list), or ``num_classes`` (labels are then integers ``0..num_classes-1``).
    """

    def __init__(self, names: Optional[Sequence[str]] = None, num_classes: Optional[int] = None):
        if names is None and num_classes is None:
            raise ValueError("a label vocabulary needs class names or num_classes")
        if names is not None:
            names = [str(n) for n in names]
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"label vocabulary has duplicate names: {dup}")
            self.names: List[str] = names
        else:
            if num_classes <= 0:
                raise ValueError("num_classes must be positive")
            self.names = [str(i) for i in range(num_classes)]
        self.index = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "LabelVocab":
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):
            return cls(json.loads(text))
        return cls([line.strip() for line in text.splitlines() if line.strip()])

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, label) -> int:
        key = str(label).strip()
        try:
            return self.index[key]
        except KeyError:
            raise LabelError(f"label {key!r} is not in the vocabulary of {len(self)} classes") from None


def label_of(field: str, cls_text: Optional[str], json_text: Optional[str], txt: Optional[str] = None):
    """Fetch the raw label named by ``field``: ``cls``, ``txt`` or ``json:<name>``."""
    if field == "cls":
        value = cls_text
    elif field == "txt":
        value = txt
    elif field.startswith("json:"):
        value = None if json_text is None else json.loads(json_text).get(field[5:])
    else:
        raise ValueError(f"unknown label field {field!r} (use cls, txt or json:<name>)")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise LabelError(f"no label in field {field!r}")
    return value


def encode_target(vocab: LabelVocab, value, multi_label: bool) -> Union[int, np.ndarray]:
    """Class index (single-label) or multi-hot float32 vector (multi-label).

    Multi-label values are a list, or a string separated by commas or spaces.
    """
    if not multi_label:
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise LabelError(f"expected one label, got {len(value)}: {value!r}")
            value = value[0]
        return vocab.lookup(value)
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    hot = np.zeros(len(vocab), dtype=np.float32)
    for item in items:
        hot[vocab.lookup(item)] = 1.0
    return hot


def segments_of(field: str, json_text: Optional[str], vocab: LabelVocab) -> list:
    """Timed segments ``[[start_s, end_s, label], ...]`` from ``json:<name>`` (an empty list
    is fine: no event), as (start, end, class index) triples. LabelError when malformed."""
    if not field.startswith("json:"):
        raise ValueError("labels.frame_field: must be json:<name>")
    value = None if json_text is None else json.loads(json_text).get(field[5:])
    if value is None:
        raise LabelError(f"no frame segments in field {field!r}")
    if not isinstance(value, list):
        raise LabelError(f"{field}: expected a list of [start_s, end_s, label], got {type(value).__name__}")
    out = []
    for seg in value:
        if not (isinstance(seg, (list, tuple)) and len(seg) == 3 and all(isinstance(v, (int, float))
                                                                       for v in seg[:2])):
            raise LabelError(f"{field}: bad segment {seg!r} (expected [start_s, end_s, label])")
        start, end = float(seg[0]), float(seg[1])
        if not 0 <= start <= end:
            raise LabelError(f"{field}: segment {seg!r} needs 0 <= start <= end")
        out.append((start, end, vocab.lookup(seg[2])))
    return out


def frame_matrix(segments, num_frames: int, num_classes: int, frame_seconds: float,
                 offset_seconds: float = 0.0) -> np.ndarray:
    """[num_frames, num_classes] multi-hot: frame i (at time offset + i * frame_seconds) is
    on for class c when a segment of c holds that time (start <= t < end)."""
    out = np.zeros((num_frames, num_classes), dtype=np.float32)
    t = offset_seconds + np.arange(num_frames) * frame_seconds
    for start, end, c in segments:
        out[(t >= start) & (t < end), c] = 1.0
    return out
