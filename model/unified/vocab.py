"""The unified model's tokenizer, built offline with `tokenizers`: special tokens, one token per
image code, and the words of prompts, edits and reflections (whitespace and punctuation split)."""

from __future__ import annotations

import re

import numpy as np

SPECIALS = ("<pad>", "<unk>", "<eos>", "<draw>", "<reflect>", "<revise>", "<edit>", "<boi>", "<eoi>", "<sep>")
CODE0 = len(SPECIALS)  # id of image code 0; code c is CODE0 + c


def code_token(c: int) -> str:
    return f"<c{c}>"


def corpus(n: int = 3000, seed: int = 12345) -> list[str]:
    """Texts the model reads or writes: prompts of every split, edits, reflections."""
    from model.unified.tasks import make_examples
    from world import suite

    rng = np.random.default_rng(seed)
    texts = [item.prompt for split in ("train", "dev", "test") for item in suite(split, 50)]
    for task in ("reflect", "revise", "edit"):
        for ex in make_examples(task, rng, n):
            texts += [ex.text, ex.critique or ""]
    return texts + own_words()


def own_words() -> list[str]:
    """Texts of reflections that only the model's own drawings call for (the synthetic stream renders
    clean shapes): a region that is no shape."""
    from tasks.shapeworld import no_shape
    from world.parse import Blob

    return [no_shape(Blob(color=c, box=(0, 0, 8, 8), why="")) for c in ("unknown", "red")]


def words_of(texts: list[str]) -> list[str]:
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()
    return sorted({w for t in texts for w, _ in split.pre_tokenize_str(t)})


def build_tokenizer(num_codes: int, texts: list[str]):
    """A PreTrainedTokenizerFast over a WordLevel model; save_pretrained / AutoTokenizer round-trip."""
    tokens = [*SPECIALS, *(code_token(c) for c in range(num_codes)), *words_of(texts)]
    return _word_level({tok: i for i, tok in enumerate(tokens)}, num_codes)


def with_words(tok, texts: list[str]):
    """`tok` with the words of `texts` it lacks appended (new ids after the old ones, which keep theirs),
    or `tok` itself when it has them all: a work folder started before a label used them."""
    vocab = tok.get_vocab()
    new = [w for w in words_of(texts) if w not in vocab]
    if not new:
        return tok
    codes = sum(1 for t in vocab if re.fullmatch(r"<c\d+>", t))
    return _word_level({**vocab, **{w: len(vocab) + i for i, w in enumerate(new)}}, codes)


def _word_level(vocab: dict[str, int], num_codes: int):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    # markers and image codes read as one token each in plain text too ("<boi> <c12> <c40> ..."),
    # so text-only tools (TRL's trainers, a chat template) can hold a whole sequence as a string
    core.add_special_tokens([*SPECIALS, *(code_token(c) for c in range(num_codes))])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                   additional_special_tokens=list(SPECIALS[3:]), padding_side="left")


_FIELD = re.compile(r"\s*\b(wrong|verdict|edit)\s*:")


def detokenize(words: str) -> str:
    """Words joined by the tokenizer's decoder -> the reflection's line format."""
    text = re.sub(r"\s+([,;:)])", r"\1", words)
    text = re.sub(r"\(\s+", "(", text)
    return _FIELD.sub(lambda m: f"\n{m.group(1)}:", text).strip()
