"""Transcripts -> token ids: the built-in characters, a vocabulary file, a sentencepiece model."""
import pytest

from specstream.config import ConfigError
from specstream.labels import LabelError
from specstream.tokenizers import CHARS, build_tokenizer, normalise


def test_char_tokenizer_normalises_and_round_trips():
    tok = build_tokenizer("char")
    assert tok.vocab_size == len(CHARS) + 1  # id 0 is the CTC blank
    ids = tok.encode("  It's   FORTY-two,\tplease! ")
    assert min(ids) >= 1 and tok.decode(ids) == "it's forty two please"
    assert tok.decode([0] + ids + [0, 999]) == "it's forty two please"  # blanks and unknown ids skipped
    assert normalise("Ｆｕｌｌ　ｗｉｄｔｈ") == "full width"  # NFKC
    assert tok.decode(tok.encode("Don\u2019t rock \u2019n\u2019 roll")) == "don't rock 'n' roll"


@pytest.mark.parametrize("text, message", [("", "empty transcript"), ("?!", "empty transcript"),
                                           ("naïve", "'ï'"), ("日本", "'日'")])
def test_char_tokenizer_refuses_what_it_cannot_spell(text, message):
    with pytest.raises(LabelError, match=message):
        build_tokenizer("char").encode(text)


def test_vocab_file_greedy_longest_match_and_word_separator(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("th\nt\nh\ne\n|\nthe\n", encoding="utf-8")
    tok = build_tokenizer(f"vocab:{path}")
    assert tok.vocab_size == 7
    ids = tok.encode("The teeth")
    assert [tok.tokens[i - 1] for i in ids] == ["the", "|", "t", "e", "e", "th"]
    assert tok.decode(ids) == "the teeth"
    with pytest.raises(LabelError, match="no token"):
        tok.encode("thx")
    punct = tmp_path / "punct.txt"
    punct.write_text("a\nb\n,\n?\n|\n", encoding="utf-8")
    tp = build_tokenizer(f"vocab:{punct}")
    assert [tp.tokens[i - 1] for i in tp.encode("A, b?")] == ["a", ",", "|", "b", "?"]  # its punctuation kept


@pytest.mark.parametrize("content, message", [("", "is empty"), ("a\na\n", "repeats 'a'")])
def test_vocab_file_errors(tmp_path, content, message):
    path = tmp_path / "v.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        build_tokenizer(f"vocab:{path}")
    with pytest.raises(ConfigError, match="cannot read"):
        build_tokenizer(f"vocab:{tmp_path / 'missing.txt'}")


def test_sentencepiece_model_round_trips(tmp_path):
    import sentencepiece as spm  # a test dependency; the [sentencepiece] extra for users
    corpus = tmp_path / "text.txt"
    words = "one two three four five six seven eight nine zero oh".split()
    corpus.write_text("\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(6)) for i in range(200)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=25,
                                   model_type="unigram", bos_id=-1, eos_id=-1, minloglevel=2)
    tok = build_tokenizer(f"sentencepiece:{tmp_path / 'm.model'}")
    ids = tok.encode("three four nine")
    assert min(ids) >= 1 and max(ids) < tok.vocab_size == 26
    assert tok.decode(ids) == "three four nine"
    with pytest.raises(ConfigError, match="does not exist"):
        build_tokenizer(f"sentencepiece:{tmp_path / 'none.model'}")
