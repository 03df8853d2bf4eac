"""A small CTC speech recogniser and its evaluation (pure torch; no Ray, no I/O).

- :class:`CTCModel`: log-mel [B, n_mels, T] + lengths -> CTC log-probabilities. Utterance
  mean/variance normalisation, two stride-2 convolutions (time / 4), a bidirectional GRU
  over each sample's own frames (packed: padding never reaches the recurrence), a linear
  layer to ``vocab_size`` (id 0 = blank), log-softmax.
- :func:`greedy_decode`: best path, repeats collapsed, blanks removed.
- :func:`edit_distance`, :func:`error_rate`: Levenshtein distance and the character (or
  word) error rate = edits / reference length, summed over a set.
- :func:`spoken_text`: free text -> the ``char`` tokenizer's alphabet, numbers spelled out
  as words (the data scripts use it for transcripts).
- :func:`parse_transcription`: the text of a Sphinx transcription file -> {id: words}.

Used by ``pipelines/train_ctc.py`` and the ``scripts/make_asr_*.py`` data tools.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .features import utterance_mvn

# --------------------------------------------------------------------------- the model


class CTCModel(torch.nn.Module):
    """log-mel [B, n_mels, T] + frame lengths [B] -> (log_probs [B, T', V], lengths [B]).

    T' = ceil(ceil(T / 2) / 2) (two stride-2 convolutions, kernel 3, padding 1)."""

    def __init__(self, n_mels: int, vocab_size: int, channels: int = 32, hidden: int = 128,
                 layers: int = 2, dropout: float = 0.1):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"CTCModel: vocab_size must be >= 2 (blank + one token), got {vocab_size}")
        self.n_mels, self.vocab_size = n_mels, vocab_size
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, channels, 3, stride=2, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(channels, channels, 3, stride=2, padding=1), torch.nn.GELU(),
        )
        freq = (n_mels + 1) // 2
        freq = (freq + 1) // 2
        self.proj = torch.nn.Linear(channels * freq, hidden)
        self.rnn = torch.nn.GRU(hidden, hidden, num_layers=layers, bidirectional=True, batch_first=True,
                                dropout=dropout if layers > 1 else 0.0)
        self.drop = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(2 * hidden, vocab_size)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return ((lengths + 1) // 2 + 1) // 2

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if feats.dim() != 3 or feats.shape[1] != self.n_mels:
            raise ValueError(f"CTCModel: features must be [B, n_mels={self.n_mels}, T], got {tuple(feats.shape)}")
        lengths = lengths.to(feats.device).long()
        x = utterance_mvn(feats, lengths).unsqueeze(1)  # [B, 1, F, T], zero past each length
        x = self.conv(x)  # [B, C, F', T']
        B, C, Fq, T = x.shape
        out_len = self.output_lengths(lengths).clamp(min=1, max=T)
        x = x.permute(0, 3, 1, 2).reshape(B, T, C * Fq)
        x = self.drop(F.gelu(self.proj(x)))
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, out_len.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.rnn(packed)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=T)
        return self.out(self.drop(y)).log_softmax(-1), out_len


# --------------------------------------------------------------------------- decoding, scoring


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> List[List[int]]:
    """Best path per sample over its own frames: argmax, repeats collapsed, blanks removed."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for b, n in enumerate(lengths.cpu().tolist()):
        ids = torch.unique_consecutive(best[b, :n]).tolist()
        out.append([i for i in ids if i != blank])
    return out


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(refs: Iterable[str], hyps: Iterable[str], unit: str = "char") -> Tuple[float, int, int]:
    """(rate, edits, reference length) over a set: characters (``unit="char"``, spaces
    included) or words (``"word"``). The rate is edits / reference units, summed over all pairs."""
    if unit not in ("char", "word"):
        raise ValueError(f"error_rate: unit must be 'char' or 'word', got {unit!r}")
    edits = total = 0
    for r, h in zip(refs, hyps):
        r_units = list(r) if unit == "char" else r.split()
        h_units = list(h) if unit == "char" else h.split()
        edits += edit_distance(r_units, h_units)
        total += len(r_units)
    return (edits / total if total else float("nan")), edits, total


# --------------------------------------------------------------------------- text

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"), (100, "hundred")]
DIGIT_WORDS = _ONES[:10]


def number_words(n: int) -> str:
    """A non-negative integer as English words: 342 -> 'three hundred forty two'."""
    if n < 0:
        raise ValueError(f"number_words: {n} is negative")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return number_words(head) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


_SYMBOLS = {"#": " pound ", "*": " star ", "&": " and ", "%": " percent ", "+": " plus ", "@": " at ",
            "$": " dollar ", "=": " equals "}
_NUMBER = re.compile(r"\d+")
_ABBREV = re.compile(r"\b([a-z])\.(?=[a-z]\.)")  # a.m. -> a m
_NOT_ALPHABET = re.compile(r"[^a-z' ]")
_SPACES = re.compile(r"\s+")


_TRANSCRIPTION_LINE = re.compile(r"^(?P<text>.*?)\s*\((?P<id>[^()\s]+)(?:\s+-?\d+)?\)\s*$")


def parse_transcription(text: str, source: str = "transcription") -> Dict[str, str]:
    """Sphinx transcription lines ``<s> words </s> (utterance-id)`` -> {id: words}; a line
    of another form is a ValueError naming ``source`` and the line number."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _TRANSCRIPTION_LINE.match(line.strip())
        if not m:
            raise ValueError(f"{source}:{n}: not a '<text> (id)' transcription line: {line.strip()[:80]!r}")
        out[m.group("id")] = " ".join(re.sub(r"</?s>", " ", m.group("text")).split())
    return out


def spoken_text(text: str, digits: str = "number") -> Optional[str]:
    """Free text -> lower-case a-z, apostrophe and single spaces, as it is spoken.

    Numbers are spelled out: ``digits="number"`` reads them as numbers (42 -> forty two),
    ``"digit"`` digit by digit (42 -> four two); # * & % + @ $ = become words, other
    punctuation a space. Returns None when anything else is left (another script, or a
    symbol with no spoken form), so that the caller can skip the text with a reason.
    """
    if digits not in ("number", "digit"):
        raise ValueError(f"spoken_text: digits must be 'number' or 'digit', got {digits!r}")
    t = text.lower()
    for sym, word in _SYMBOLS.items():
        t = t.replace(sym, word)
    t = _ABBREV.sub(r"\1 ", t)
    if digits == "digit":
        t = _NUMBER.sub(lambda m: " " + " ".join(DIGIT_WORDS[int(c)] for c in m.group()) + " ", t)
    else:
        t = _NUMBER.sub(lambda m: " " + number_words(int(m.group())) + " ", t)
    t = re.sub(r"[.,;:!?\"()\[\]{}/\\_-]", " ", t)
    t = t.replace("\u2019", "'")
    t = re.sub(r"(^|\s)'+|'+(\s|$)", " ", t)  # quotes, not apostrophes inside words
    t = _SPACES.sub(" ", t).strip()
    if not t or _NOT_ALPHABET.search(t):
        return None
    return t
