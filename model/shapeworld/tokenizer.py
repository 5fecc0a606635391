"""A word-level tokenizer for ShapeWorld prompts and edits, built offline with `tokenizers`."""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from world.spec import COLOR_NAMES, NUMBER_WORDS, PLURALS, RELATIONS, SHAPES

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]  # ids 0..3; eos must not be 2 (CLIP pooling)
EDIT_WORDS = ["add", "remove", "make", "move", "the", "and"]
MAX_LENGTH = 24


def vocabulary() -> list[str]:
    words = [*NUMBER_WORDS, *COLOR_NAMES, *SHAPES, *PLURALS, *EDIT_WORDS]
    words += [w for rel in RELATIONS for w in rel.split()]
    return SPECIALS + sorted(set(words))


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
        model_max_length=MAX_LENGTH)
