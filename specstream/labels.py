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
