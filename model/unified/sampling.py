"""Decoding of the unified LM with `generate`: image spans constrained by a logits processor (only
image codes inside an image, the source's codes where a revision copies them, <eoi> at the end),
classifier-free guidance between paired rows of one batch (one KV-cached forward for both), and
per-row seeded sampling, so a session's image does not depend on what it was batched with. Drawings
and revisions may share one `generate` (`sample_spans`), each kind's sampler on its own rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from model.unified.roomy_cache import roomy_cache
from model.unified.sequences import Layout
from model.unified.vocab import CODE0

IMAGE_CODES = 64


class ImageSpanSampler(LogitsProcessor):
    """Chooses every token of an image span itself and returns one-hot scores (generate runs greedy).

    Rows [0, n) are the conditional rows; with guidance != 1, rows [n, 2n) are their unconditional
    twins and take the same tokens. `sources` (n, 64) makes the span interleaved: s1 t1 s2 t2 ...
    With `change_temperature`, a written patch first keeps its source code or not (at `temperature`),
    and a changed one is sampled at `change_temperature` among the other codes.
    """

    def __init__(self, start: int, n: int, num_codes: int, eoi: int, seeds: list[int], guidance: float = 1.0,
                 temperature: float = 1.0, top_k: int = 0, sources: torch.Tensor | None = None,
                 change_temperature: float | None = None):
        self.start, self.n, self.num_codes, self.eoi = start, n, num_codes, eoi
        self.guidance, self.temperature, self.top_k, self.sources = guidance, temperature, top_k, sources
        self.change_temperature = change_temperature
        self.length = IMAGE_CODES * (2 if sources is not None else 1)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t = input_ids.shape[1] - self.start
        chosen = torch.full((self.n,), self.eoi, dtype=torch.long)
        if t < self.length and self.sources is not None and t % 2 == 0:
            chosen = self.sources[:, t // 2].cpu() + CODE0
        elif t < self.length:
            logits = scores[:, CODE0:CODE0 + self.num_codes].float().log_softmax(-1)
            if self.guidance != 1.0 and logits.shape[0] == 2 * self.n:
                cond, uncond = logits[:self.n], logits[self.n:]
                logits = uncond + self.guidance * (cond - uncond)
            if self.sources is not None and self.change_temperature is not None:
                chosen = self._keep_or_change(logits[:self.n], self.sources[:, t // 2].to(logits.device)) + CODE0
            else:
                chosen = self._sample(logits[:self.n]) + CODE0
        out = torch.full_like(scores, float("-inf"))
        rows = chosen.to(scores.device).repeat(scores.shape[0] // self.n)
        out[torch.arange(scores.shape[0], device=scores.device), rows] = 0.0
        return out

    def _keep_or_change(self, logits: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(source), device=logits.device)
        keep = (logits / max(self.temperature, 1e-6)).softmax(-1)[rows, source].cpu()
        draws = torch.cat([torch.rand(1, generator=g) for g in self.generators])
        other = logits.clone()
        other[rows, source] = float("-inf")
        changed = self._sample(other, self.change_temperature)
        return torch.where(draws < keep, source.cpu(), changed)

    def _sample(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        temperature = self.temperature if temperature is None else temperature
        if temperature == 0:
            return logits.argmax(-1).cpu()
        logits = logits / temperature
        if self.top_k:
            kth = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return draw_rows(logits.softmax(-1).cpu(), self.generators)


class VerdictGate(LogitsProcessor):
    """Right after `verdict:` the verdict is "right" only when P(right) (of right vs wrong) reaches the
    threshold, else "wrong". The threshold is calibrated on the model's own train-prompt drawings
    (calibrate.py): a greedy verdict at 0.5 called too many wrong images right."""

    def __init__(self, layout: Layout, threshold: float):
        self.verdict, self.colon = layout.verdict_word, layout.colon
        self.right, self.wrong, self.threshold = layout.right_word, layout.wrong_word, threshold

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] < 2:
            return scores
        at = (input_ids[:, -2] == self.verdict) & (input_ids[:, -1] == self.colon)
        if not at.any():
            return scores
        p_right = scores[:, [self.right, self.wrong]].float().softmax(-1)[:, 0]
        pick = torch.where(p_right >= self.threshold, self.right, self.wrong)
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(len(pick), device=scores.device), pick] = 0.0
        return torch.where(at[:, None], forced, scores)


class RowSampler(LogitsProcessor):
    """Samples each row's next token at `temperature` with the row's own generator and returns one-hot
    scores (generate runs greedy): a row's sample does not depend on what it was batched with. Rows
    whose seed is None stay greedy, through `greedy` (the verdict gate) when given: a critic's greedy
    reflection and its sampled votes share one batch. `keep(rows)` follows the rows that stay when
    finished ones leave the batch."""

    def __init__(self, seeds: list[int | None], temperature: float = 1.0, greedy: LogitsProcessor | None = None):
        self.generators = [None if s is None else torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.greedy = temperature, greedy

    def keep(self, rows: list[int]) -> None:
        self.generators = [self.generators[j] for j in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores if self.greedy is None else self.greedy(input_ids, scores)
        drawn = [j for j, g in enumerate(self.generators) if g is not None]
        if not drawn:
            return out
        probs = (scores[drawn].float() / max(self.temperature, 1e-6)).softmax(-1).cpu()
        chosen = draw_rows(probs, [self.generators[j] for j in drawn])
        out = out.clone()
        out[drawn] = float("-inf")
        out[torch.tensor(drawn, device=scores.device), chosen.to(scores.device)] = 0.0
        return out


def draw_rows(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of `probs` (n, vocab), each from its row's generator: what
    `torch.multinomial(p, 1, generator=g)` draws row by row (its own algorithm for one sample:
    argmax of p / q with q ~ Exp(1)), at a quarter of the cost (one call per row was 9-11% of a
    288-row critic batch). Same tokens to the row (tested)."""
    q = torch.empty_like(probs)
    for row, g in zip(q, generators):
        row.exponential_(generator=g)
    return (probs / q).argmax(-1, keepdim=True).flatten()


def left_pad(layout: Layout, rows: list[list[int]], device) -> dict[str, torch.Tensor]:
    n = max(map(len, rows))
    ids = torch.full((len(rows), n), layout.pad)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r):], mask[i, n - len(r):] = torch.tensor(r), 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@dataclass
class ImageSpans:
    """Images to write after `prefixes`: drawings (no `sources`) or revisions and edits (`sources` (n, 64),
    interleaved). `uncond_prefixes` are the rows classifier-free guidance pairs them with."""

    prefixes: list[list[int]]
    seeds: list[int]
    uncond_prefixes: list[list[int]] | None = None
    guidance: float = 1.0
    sources: torch.Tensor | None = None
    temperature: float = 1.0
    top_k: int = 0
    change_temperature: float | None = None

    def rows(self) -> list[list[int]]:
        return self.prefixes + (self.uncond_prefixes if self.guidance != 1.0 and self.uncond_prefixes else [])

    def sampler(self, start: int, layout: Layout) -> ImageSpanSampler:
        return ImageSpanSampler(start, len(self.prefixes), layout.num_codes, layout.eoi, self.seeds, self.guidance,
                                self.temperature, self.top_k, self.sources, self.change_temperature)


class SpanBlocks(LogitsProcessor):
    """Each group's sampler on its own block of rows of one batch. A block whose span is over writes <eoi>
    (its rows have finished; generate pads them): drawings and revisions share one `generate`, whose
    length is the longest span's, instead of one after the other."""

    def __init__(self, samplers: list[ImageSpanSampler], sizes: list[int]):
        self.samplers, self.sizes = samplers, sizes

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids, parts = input_ids.split(self.sizes), scores.split(self.sizes)
        return torch.cat([s(i, p) for s, i, p in zip(self.samplers, ids, parts)])


def sample_spans(model, layout: Layout, groups: list[ImageSpans]) -> list[torch.Tensor]:
    """Codes (n, 64) of each group's images, all in one `generate`; every row is seeded by itself, so a
    row writes what it writes in a batch of its own group alone (tested)."""
    live = [g for g in groups if g.prefixes]
    codes = iter(_one_generate(model, layout, live) if live else [])
    return [next(codes) if g.prefixes else torch.empty((0, IMAGE_CODES), dtype=torch.long) for g in groups]


@torch.inference_mode()
def _one_generate(model, layout: Layout, groups: list[ImageSpans]) -> list[torch.Tensor]:
    sizes = [len(g.rows()) for g in groups]
    device = next(model.parameters()).device
    batch = left_pad(layout, [row for g in groups for row in g.rows()], device)
    start = batch["input_ids"].shape[1]
    samplers = [g.sampler(start, layout) for g in groups]
    length = max(s.length for s in samplers)
    out = model.generate(**batch, cache=roomy_cache(model.config, room=length + 1), do_sample=False,
                         logits_processor=LogitsProcessorList([SpanBlocks(samplers, sizes)]), eos_token_id=layout.eoi,
                         max_new_tokens=length + 1, min_new_tokens=min(s.length for s in samplers) + 1,
                         pad_token_id=layout.pad)
    codes, first = [], 0
    for g, s, size in zip(groups, samplers, sizes):
        span = out[first:first + len(g.prefixes), start:start + s.length]
        codes.append((span[:, 1::2] if g.sources is not None else span) - CODE0)
        first += size
    return codes


@torch.inference_mode()
def write_reflections(model, layout: Layout, prefixes: list[list[int]], max_new_tokens: int = 160,
                      right_threshold: float = 0.5, chunk: int = 24, sample_seeds: list[int | None] | None = None):
    """Greedy reflections after each prefix, the verdict gated by `right_threshold`; returns (texts,
    P(verdict right) per row or None: the raw probability, before the gate). With `sample_seeds` (one
    per row), the rows with a seed are sampled at temperature 1 instead, ungated, and give 1.0 / 0.0
    for the verdict they wrote (None: none); rows whose seed is None stay greedy.

    A batch runs `chunk` tokens at a time, and rows that have finished leave it (their KV cache rows
    dropped, the rest carried over): one `generate` runs as long as its longest row, and one rambling
    reflection of 110 tokens among 32 of about 25 made the batch twice as slow (measured)."""

    from model.unified.vocab import detokenize

    device = next(model.parameters()).device
    batch = left_pad(layout, prefixes, device)
    ids, mask, start = batch["input_ids"], batch["attention_mask"], batch["input_ids"].shape[1]
    budget = min(max_new_tokens, model.config.max_position_embeddings - start)
    chunk = chunk if len(prefixes) > 1 else budget  # one row: nothing to drop
    written: list[list[int]] = [[] for _ in prefixes]
    verdict_logits: list[list[torch.Tensor]] = [[] for _ in prefixes]  # per new token: logits of (right, wrong)
    rows, cache = torch.arange(len(prefixes)), shared_prefill(model, layout, prefixes, device)
    gate = VerdictGate(layout, right_threshold)
    sampler = RowSampler(sample_seeds, greedy=gate) if sample_seeds is not None else None
    processors = LogitsProcessorList([sampler or gate])
    while len(rows) and ids.shape[1] - start < budget:
        out = model.generate(input_ids=ids, attention_mask=mask, cache=cache, do_sample=False,
                             max_new_tokens=min(chunk, budget - (ids.shape[1] - start)), logits_processor=processors,
                             suppress_tokens=layout.not_text, eos_token_id=layout.eos, pad_token_id=layout.pad,
                             output_logits=True, return_dict_in_generate=True)
        new = out.sequences[:, ids.shape[1]:]
        two = torch.stack(out.logits, 1)[:, :, [layout.right_word, layout.wrong_word]]
        going = []
        for j, row in enumerate(new.tolist()):
            if layout.eos in row:
                row = row[:row.index(layout.eos) + 1]
            else:
                going.append(j)
            written[rows[j]] += row
            verdict_logits[rows[j]] += list(two[j, :len(row)])
        if not going:
            break
        if sampler:
            sampler.keep(going)
        going = torch.tensor(going, dtype=torch.long)
        ids, rows = out.sequences[going], rows[going]
        mask = torch.cat([mask[going], torch.ones(len(going), new.shape[1], dtype=mask.dtype, device=device)], 1)
        cache.batch_select_indices(going.to(device))
    texts = [detokenize(layout.tok.decode(row, skip_special_tokens=True)) for row in written]
    seeds = sample_seeds or [None] * len(written)
    return texts, [verdict_probability(layout, row, logits) if seed is None else said_right(layout, row)
                   for row, logits, seed in zip(written, verdict_logits, seeds)]


def shared_prefill(model, layout: Layout, prefixes: list[list[int]], device):
    """A KV cache of every row's prefix but its last token, each distinct prefix run once: a critic
    with verdict votes writes 9 rows per image after one prefix, and the prefix (~72 tokens) is most
    of their compute (measured: 1.2 of 2.8 s for 256 sampled rows). `generate` then starts at the
    last prefix token, with the positions it would have given (left padding counted out)."""
    distinct: dict[tuple[int, ...], int] = {}
    which = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prefixes], device=device)
    cache = roomy_cache(model.config)
    if len(distinct) == len(prefixes):
        return cache
    batch = left_pad(layout, [list(p) for p in distinct], device)
    width = max(map(len, prefixes))
    ids, mask = batch["input_ids"][:, :width - 1], batch["attention_mask"][:, :width - 1]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    cache.batch_select_indices(which)
    return cache


def said_right(layout: Layout, row: list[int]) -> float | None:
    k = layout.verdict_at(row)
    return None if k is None else float(row[k] == layout.right_word)


def verdict_probability(layout: Layout, row: list[int], logits: list[torch.Tensor]) -> float | None:
    """P(right) of right vs wrong where the reflection writes its verdict (None: it wrote none)."""
    k = layout.verdict_at(row)
    return None if k is None else float(logits[k].float().softmax(-1)[0])
