"""A word-level tokenizer for everything the critic reads or writes, built offline with `tokenizers`.

A reflection is parsed back from the generated text, so decode(encode(text)) must give the
text back, spaces included. A word-level vocabulary loses spaces, so a space is kept on the
token that follows it, as GPT-2 does: `a red circle (top left)` -> `a ▁red ▁circle ▁( top
▁left )`. Every word and sign exists with and without the `▁`; the decoder turns `▁` back
into a space and concatenates. Digits are single tokens (blob descriptions carry coordinates
and measurements), and a run of spaces is a run of `▁` tokens, so any spacing survives.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from model.shapeworld.tokenizer import SPECIALS
from model.shapeworld.tokenizer import vocabulary as world_vocabulary

SPACE = "▁"
IMAGE_TOKEN, USER_TOKEN, CRITIC_TOKEN = "<image>", "<user>", "<critic>"
CHAT_TOKENS = [IMAGE_TOKEN, USER_TOKEN, CRITIC_TOKEN]
FORMAT_WORDS = ["seen", "wrong", "verdict", "edit", "right", "nothing", "none", "regenerate"]
PLACE_WORDS = ["top", "bottom", "left", "right", "centre"]
# world/verify.py defect messages: "expected two circles, found one", "found an extra red square",
# "the circle is not above the square (it is only just above it)", "cannot tell which objects are ..."
DEFECT_WORDS = ["expected", "found", "instead", "extra", "is", "are", "not", "all", "it", "only", "just", "level",
                "with", "five", "six", "cannot", "tell", "which", "objects"]
# world/parse.py Blob.description: "a region of unknown colour near (32, 40) that is no shape (no palette
# colour)", with the parser's why: "aspect 1.52", "size 12x14, fill 0.55, upper share 0.30", "mixed colours (45% red)"
BLOB_WORDS = ["region", "of", "unknown", "colour", "colours", "near", "that", "no", "shape", "palette", "mixed",
              "aspect", "size", "x", "fill", "upper", "share"]
SIGNS = [":", ";", "(", ")", ",", ".", "%", "-"]
DIGITS = list("0123456789")
NEWLINE = "\n"
# a word or sign, with the space before it if any; a newline alone; a space not followed by a token
PIECE = rf"{SPACE}?[a-z]+|{SPACE}?[0-9]|{SPACE}?[^a-z0-9{SPACE}\n]|\n|{SPACE}"


def words() -> list[str]:
    """What the critic can say, without spaces: the world's prompt and edit words and the reflection's."""
    world = [w for w in world_vocabulary() if w not in SPECIALS]
    return sorted(set(world + FORMAT_WORDS + PLACE_WORDS + DEFECT_WORDS + BLOB_WORDS))


def vocabulary() -> list[str]:
    pieces = words() + SIGNS + DIGITS
    return SPECIALS + CHAT_TOKENS + [NEWLINE, SPACE] + pieces + [SPACE + p for p in pieces]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", SPACE)])
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE), behavior="isolated")
    tk.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.Fuse()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "user_token": USER_TOKEN, "critic_token": CRITIC_TOKEN},
        clean_up_tokenization_spaces=False, model_max_length=256)
