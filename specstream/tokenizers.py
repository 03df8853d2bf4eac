"""Transcripts -> token ids for sequence targets (CTC, seq2seq).

``labels.tokenizer`` names one:

- ``char``: characters, built in. Text is normalised (Unicode NFKC, lower case, typographic
  apostrophes made ', punctuation other than the apostrophe removed, runs of white space made one space, stripped), then
  every character must be one of ``' abcdefghijklmnopqrstuvwxyz0123456789``; any other is a
  :class:`~specstream.labels.LabelError` naming it (the sample is quarantined, not
  silently changed).
- ``vocab:FILE``: one token per line (UTF-8; the line's text, blank lines ignored, no
  duplicates). Text is normalised as for ``char`` when every token of the file is lower
  case (punctuation kept when the file has tokens with punctuation), and split into the
  longest tokens of the file that match (greedy, left to right);
  a space is a token when the file has a line holding a single ``|`` (wav2vec 2.0's word
  separator), else spaces are dropped.
- ``sentencepiece:MODEL``: a SentencePiece model file (``pip install sentencepiece``, the
  ``[sentencepiece]`` extra).

Every tokenizer reserves id 0 for the CTC blank (and padding): token ids start at 1, and
``vocab_size`` counts the blank, so a CTC output layer has ``vocab_size`` units.
"""
from __future__ import annotations

import os
import re
import unicodedata
from typing import Dict, List, Sequence

from .errors import ConfigError
from .labels import LabelError

CHARS = " 'abcdefghijklmnopqrstuvwxyz0123456789"
BLANK = 0

_PUNCT = re.compile(r"[^\w\s']", re.UNICODE)
_SPACE = re.compile(r"\s+", re.UNICODE)


_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "`": "'"})


def normalise(text: str, punctuation: bool = True) -> str:
    """NFKC, lower case, typographic apostrophes made ', punctuation (other than ') removed
    (unless ``punctuation`` is False), white space collapsed."""
    t = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES).replace("_", " ")
    if punctuation:
        t = _PUNCT.sub(" ", t)
    return _SPACE.sub(" ", t).strip()


class Tokenizer:
    """Base: ``encode(text) -> list of ids >= 1``, ``decode(ids) -> text`` (0 and unknown ids
    skipped), ``vocab_size`` (blank included), ``spec`` (the config string)."""

    spec: str = ""
    vocab_size: int = 1

    def encode(self, text: str) -> List[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    def __init__(self, chars: str = CHARS):
        self.spec = "char"
        self.chars = chars
        self.ids: Dict[str, int] = {c: i + 1 for i, c in enumerate(chars)}
        self.vocab_size = len(chars) + 1

    def encode(self, text: str) -> List[int]:
        t = normalise(text)
        if not t:
            raise LabelError("empty transcript")
        out = []
        for c in t:
            i = self.ids.get(c)
            if i is None:
                raise LabelError(f"transcript character {c!r} (U+{ord(c):04X}) is not in the char tokenizer's "
                                 f"alphabet (a-z, 0-9, space, '); use labels.tokenizer: vocab:FILE or "
                                 f"sentencepiece:MODEL for other scripts")
            out.append(i)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if 0 < i <= len(self.chars))


class VocabTokenizer(Tokenizer):
    def __init__(self, path: str):
        self.spec = f"vocab:{path}"
        try:
            with open(path, encoding="utf-8") as f:
                lines = [ln.rstrip("\r\n") for ln in f]
        except OSError as e:
            raise ConfigError(f"labels.tokenizer: cannot read vocabulary {path!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"labels.tokenizer: vocabulary {path!r} is not UTF-8 text") from None
        tokens = [ln for ln in lines if ln.strip()]
        if not tokens:
            raise ConfigError(f"labels.tokenizer: vocabulary {path!r} is empty")
        dup = sorted({t for t in tokens if tokens.count(t) > 1})
        if dup:
            raise ConfigError(f"labels.tokenizer: vocabulary {path!r} repeats {dup[0]!r}")
        self.tokens = tokens
        self.ids = {t: i + 1 for i, t in enumerate(tokens)}
        self.vocab_size = len(tokens) + 1
        self.space = "|" if "|" in self.ids else None
        self.lower = all(t == t.lower() for t in tokens)
        # punctuation is removed before matching unless the vocabulary has tokens for it
        self.punctuation = not any(_PUNCT.search(t) for t in tokens if t != "|")
        self.longest = max(len(t) for t in tokens)

    def encode(self, text: str) -> List[int]:
        t = normalise(text, self.punctuation) if self.lower \
            else _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
        if not t:
            raise LabelError("empty transcript")
        out, i = [], 0
        while i < len(t):
            if t[i] == " ":
                if self.space is not None:
                    out.append(self.ids[self.space])
                i += 1
                continue
            for n in range(min(self.longest, len(t) - i), 0, -1):
                tok = self.ids.get(t[i:i + n])
                if tok is not None:
                    out.append(tok)
                    i += n
                    break
            else:
                raise LabelError(f"transcript text {t[i:i + 10]!r} has no token in {self.spec}")
        return out

    def decode(self, ids: Sequence[int]) -> str:
        words = [self.tokens[i - 1] for i in ids if 0 < i <= len(self.tokens)]
        return "".join(" " if w == self.space else w for w in words)


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: str):
        self.spec = f"sentencepiece:{path}"
        try:
            import sentencepiece
        except ImportError:
            raise ConfigError("labels.tokenizer: sentencepiece models need the sentencepiece package "
                              "(pip install 'specstream[sentencepiece]')") from None
        if not os.path.exists(path):
            raise ConfigError(f"labels.tokenizer: sentencepiece model {path!r} does not exist")
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=path)
        except (OSError, RuntimeError) as e:
            raise ConfigError(f"labels.tokenizer: {path!r} is not a sentencepiece model ({e})") from None
        self.vocab_size = self.sp.get_piece_size() + 1

    def encode(self, text: str) -> List[int]:
        ids = self.sp.encode(text.strip())
        if not ids:
            raise LabelError("empty transcript")
        return [i + 1 for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([i - 1 for i in ids if 0 < i < self.vocab_size])


_CACHE: Dict[str, Tokenizer] = {}


def build_tokenizer(spec: str) -> Tokenizer:
    """``char``, ``vocab:FILE`` or ``sentencepiece:MODEL`` -> a Tokenizer (cached per process
    and spec: a file changed while the process runs is not read again)."""
    tok = _CACHE.get(spec)
    if tok is not None:
        return tok
    kind, _, arg = spec.partition(":")
    if kind == "char" and not arg:
        tok = CharTokenizer()
    elif kind == "vocab" and arg:
        tok = VocabTokenizer(arg)
    elif kind == "sentencepiece" and arg:
        tok = SentencePieceTokenizer(arg)
    else:
        raise ConfigError(f"labels.tokenizer: {spec!r}: expected char, vocab:FILE or sentencepiece:MODEL")
    _CACHE[spec] = tok
    return tok
