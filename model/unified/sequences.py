"""Examples -> token sequences, one layout per task (only the model's own output is in the loss):

    draw     <draw> prompt <boi> c1 .. c64 <eoi>
    reflect  <reflect> prompt <boi> c1 .. c64 <eoi> reflection <eos>
    revise   <revise> prompt <sep> the reflection's edit <boi> s1 t1 s2 t2 .. s64 t64 <eoi>
    edit     <edit> instruction <boi> s1 t1 .. s64 t64 <eoi>

Revisions and edits interleave the source's codes (given) with the new image's (written): the
copy path of a kept patch is one token long, so keeping what was right is easy to learn.
"""

from __future__ import annotations

import torch

from model.unified.vocab import CODE0

IGNORE = -100


class Layout:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        ids = tokenizer.convert_tokens_to_ids
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.task = {t: ids(f"<{t}>") for t in ("draw", "reflect", "revise", "edit")}
        self.boi, self.eoi, self.sep = ids("<boi>"), ids("<eoi>"), ids("<sep>")
        self.num_codes = sum(1 for t in tokenizer.get_vocab() if t.startswith("<c") and t[2:-1].isdigit())
        self.verdict_word, self.colon = ids("verdict"), ids(":")
        self.right_word, self.wrong_word = ids("right"), ids("wrong")
        # a reflection is words: no image codes, no task or span markers
        self.not_text = [i for i in range(CODE0 + self.num_codes) if i != self.eos]

    def verdict_at(self, ids: list[int]) -> int | None:
        """Index of the token right after `verdict :` in a row (where the verdict is written), or None."""
        for k in range(2, len(ids)):
            if ids[k - 2] == self.verdict_word and ids[k - 1] == self.colon:
                return k
        return None

    def words(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    # prefixes: what the model is given before it writes
    def draw_prefix(self, prompt: str | None) -> list[int]:
        return [self.task["draw"], *self.words(prompt or ""), self.boi]

    def reflect_prefix(self, prompt: str, codes: list[int]) -> list[int]:
        return [self.task["reflect"], *self.words(prompt), self.boi, *(CODE0 + c for c in codes), self.eoi]

    def revise_prefix(self, prompt: str, instruction: str) -> list[int]:
        return [self.task["revise"], *self.words(prompt), self.sep, *self.words(instruction), self.boi]

    def edit_prefix(self, instruction: str) -> list[int]:
        return [self.task["edit"], *self.words(instruction), self.boi]

    def example(self, task: str, text: str | None, source: list[int] | None, target: list[int] | None,
                critique: str | None) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one training example; codes are VQ indices."""
        if task == "draw":
            prefix, out = self.draw_prefix(text), [CODE0 + c for c in target] + [self.eoi]
            return prefix + out, [IGNORE] * len(prefix) + out
        if task == "reflect":
            prefix, out = self.reflect_prefix(text, source), self.words(critique) + [self.eos]
            return prefix + out, [IGNORE] * len(prefix) + out
        prefix = self.revise_prefix(text, critique) if task == "revise" else self.edit_prefix(text)
        ids, labels = list(prefix), [IGNORE] * len(prefix)
        for s, t in zip(source, target):
            ids += [CODE0 + s, CODE0 + t]
            labels += [IGNORE, CODE0 + t]
        return ids + [self.eoi], labels + [self.eoi]

    def collate(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Left-padded batch (as generation sees it)."""
        n = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), n), self.pad)
        labels = torch.full((len(rows), n), IGNORE)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, n - len(ids):] = torch.tensor(ids)
            labels[i, n - len(lab):] = torch.tensor(lab)
            mask[i, n - len(ids):] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "position_ids": positions(mask)}


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions count from each row's first real token, as `generate` counts them under left padding."""
    return (mask.cumsum(-1) - 1).clamp(min=0)
