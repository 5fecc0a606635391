"""The unified model as one local folder: the LM and its tokenizer (transformers save_pretrained)
and the image tokenizer in vq/ (diffusers). What it does is four plain token sequences: draw,
reflect, revise, edit (see sequences.py). Pure inference: nothing here reads the world's parser."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from model.unified.sampling import ImageSpans, sample_spans, write_reflections
from model.unified.sequences import Layout
from model.unified.vq import decode, encode
from policies.critique import REGENERATE, CritiqueError, parse_critique

DEFAULT_MODEL = Path(__file__).parent / "weights"


def as_canvas(images: list[np.ndarray], side: int = 64) -> np.ndarray:
    """The model sees 64x64 RGB: other sizes (a real checkpoint's images) are resized."""
    from PIL import Image

    out = [img if img.shape == (side, side, 3) else
           np.asarray(Image.fromarray(np.asarray(img, np.uint8)).convert("RGB").resize((side, side), Image.BICUBIC))
           for img in images]
    return np.stack(out)


@dataclass
class Sampling:
    """Decoding settings. None takes the model folder's choice (sampling.json: picked by the recipe on
    its own drawings of train prompts), or FALLBACK's for a folder without one."""
    guidance: float | None = None  # classifier-free guidance of drawings (1: none)
    temperature: float | None = None  # of drawings; revisions and edits keep a patch or not at 1 (lower copies)
    change_temperature: float | None = None  # of what a revision or edit writes where it does not copy (0: likeliest)
    top_k: int | None = None  # of drawings (0: all codes)
    right_threshold: float | None = None  # the verdict gate; None: the folder's calibrated one (reflect.json)
    verdict_votes: int | None = None  # sampled reflections whose share of "right" is P(right); 0: the greedy one's

    def over(self, base: Sampling) -> Sampling:
        return Sampling(**{k: getattr(base, k) if v is None else v for k, v in asdict(self).items()})


FALLBACK = Sampling(guidance=1.5, temperature=1.0, top_k=0, change_temperature=0.0)
DRAWING_KEYS = ("guidance", "temperature", "top_k")


def tally(greedy: list[str], p_greedy: list[float | None], samples: list[list[str]],
          said: list[list[float | None]], threshold: float) -> tuple[list[str], list[float]]:
    """Per row: P(right) = the share of its samples that say right; the text is the greedy reflection
    when its verdict is the vote's, else the first sample that says the vote's (one that reads as a
    critique, when there is one), else the greedy one."""
    texts, shares = [], []
    for text, p, mine, verdicts in zip(greedy, p_greedy, samples, said):
        share = sum(x or 0.0 for x in verdicts) / len(verdicts)
        right = share >= threshold
        said_so = [t for t, x in zip(mine, verdicts) if x == float(right)]
        agrees = p is not None and (p >= 0.5) == right
        texts.append(text if agrees or not said_so else next(filter(_reads, said_so), said_so[0]))
        shares.append(share)
    return texts, shares


def _reads(text: str) -> bool:
    try:
        return bool(parse_critique(text))
    except CritiqueError:
        return False


def read_choice(path: Path) -> tuple[dict, Sampling]:
    """A folder's sampling.json; ValueError names the file and what is wrong in it."""
    try:
        choice = json.loads(path.read_text())
        chosen = {k: choice.get(k) for k in DRAWING_KEYS}
        ok = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0)
                 for v in chosen.values()) and (chosen["temperature"] or 0) <= 10
        if not ok or (chosen["top_k"] is not None and not isinstance(chosen["top_k"], int)):
            raise ValueError("guidance, temperature (0-10) and top_k (an integer) must be numbers >= 0")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not a drawing-settings file ({e}); rerun the recipe's stages 5-6 or delete it") \
            from None
    return choice, Sampling(**chosen).over(FALLBACK)


class UnifiedModel:
    def __init__(self, lm, tokenizer, vq, sampling: Sampling | None = None):
        self.lm, self.tok, self.vq = lm.eval(), tokenizer, vq.eval()
        self.layout = Layout(tokenizer)
        self.sampling = sampling or Sampling()  # what the caller asks for
        self.chosen = FALLBACK  # the folder's drawing settings (sampling.json)
        self.choice: dict = {}  # how they were chosen (calibrate.choose_sampling)
        self.calibrated_threshold = 0.5  # what the folder's reflect.json says, when it has one
        self.calibrated_votes = 0  # likewise: 0, P(right) of the greedy reflection's own verdict
        self.calibration: dict = {}  # how it was chosen (calibrate.py)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", sampling: Sampling | None = None):
        from diffusers import VQModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()  # a model of a few MB loads in a blink; the bars only clutter output
        path = Path(path) if path else DEFAULT_MODEL
        for need in ("config.json", "tokenizer.json", "vq/config.json"):
            if not (path / need).is_file():
                raise FileNotFoundError(f"{path} is not a unified model folder (no {need}); train one with "
                                        "`refloop world train unified` or give the folder it wrote")
        lm = AutoModelForCausalLM.from_pretrained(path).to(device)
        vq = VQModel.from_pretrained(path / "vq").to(device)
        model = cls(lm, AutoTokenizer.from_pretrained(path), vq, sampling)
        if (path / "reflect.json").is_file():
            model.calibration = json.loads((path / "reflect.json").read_text())
            model.calibrated_threshold = float(model.calibration["right_threshold"])
            model.calibrated_votes = int(model.calibration.get("verdict_votes", 0))
        if (path / "sampling.json").is_file():
            model.choice, model.chosen = read_choice(path / "sampling.json")
        return model

    @property
    def settings(self) -> Sampling:
        """The caller's settings over the folder's."""
        return self.sampling.over(self.chosen)

    def save(self, path: Path, extra_files: dict[str, str] | None = None) -> Path:
        """Written beside, then swapped in: a reader never sees half a model."""
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.lm.save_pretrained(tmp)
        self.tok.save_pretrained(tmp)
        self.vq.save_pretrained(tmp / "vq")
        vq_config = json.loads((tmp / "vq" / "config.json").read_text())
        vq_config.pop("_name_or_path", None)  # where it was loaded from: not part of the model
        (tmp / "vq" / "config.json").write_text(json.dumps(vq_config, indent=2, sort_keys=True) + "\n")
        (tmp / "reflect.json").write_text(json.dumps(
            {**self.calibration, "right_threshold": self.calibrated_threshold,
             "verdict_votes": self.calibrated_votes}, indent=1) + "\n")
        chosen = {k: getattr(self.chosen, k) for k in DRAWING_KEYS}
        (tmp / "sampling.json").write_text(json.dumps({**self.choice, **chosen}, indent=1) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.rglob("*"):  # safetensors writes 0600; a shipped model is for every user
            f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return path

    # the four tasks, batched
    def draw_codes(self, prompts: list[str], seeds: list[int], guidance: float | None = None) -> torch.Tensor:
        return sample_spans(self.lm, self.layout, [self._drawings(prompts, seeds, guidance)])[0]

    def _drawings(self, prompts: list[str], seeds: list[int], guidance: float | None = None) -> ImageSpans:
        s = self.settings
        return ImageSpans([self.layout.draw_prefix(p) for p in prompts], seeds,
                          uncond_prefixes=[self.layout.draw_prefix(None)] * len(prompts),
                          guidance=s.guidance if guidance is None else guidance, temperature=s.temperature,
                          top_k=s.top_k)

    def _changes(self, prefixes: list[list[int]], images: list[np.ndarray], seeds: list[int]) -> ImageSpans:
        """Revisions or edits: the source's codes interleaved with the written ones."""
        sources = encode(self.vq, as_canvas(images)) if images else None
        return ImageSpans(prefixes, seeds, sources=sources, change_temperature=self.settings.change_temperature)

    def draw(self, prompts: list[str], seeds: list[int], guidance: float | None = None) -> list[np.ndarray]:
        return list(decode(self.vq, self.draw_codes(prompts, seeds, guidance)))

    def reflect(self, prompts: list[str], images: list[np.ndarray]) -> tuple[list[str], list[float | None]]:
        """(texts, P(right) per image). With verdict votes, P(right) is the share of that many reflections
        sampled at temperature 1 that say right: the greedy verdict is as sure where the model misreads an
        image as where it reads it right, its samples disagree more (README, "Verdict votes")."""
        codes = encode(self.vq, as_canvas(images)).tolist()
        prefixes = [self.layout.reflect_prefix(p, c) for p, c in zip(prompts, codes)]
        threshold, votes = self.sampling.right_threshold, self.sampling.verdict_votes
        threshold = self.calibrated_threshold if threshold is None else threshold
        votes = self.calibrated_votes if votes is None else votes
        if not votes:
            return write_reflections(self.lm, self.layout, prefixes, right_threshold=threshold)
        return self._voted(prefixes, votes, threshold)

    def _voted(self, prefixes: list[list[int]], votes: int, threshold: float) -> tuple[list[str], list[float]]:
        """The greedy reflection and the votes in one batch, over one shared prefill per image."""
        seeds = [zlib.crc32(np.asarray(row + [k], dtype=np.int64).tobytes()) for k in range(votes) for row in prefixes]
        n = len(prefixes)
        texts, said = write_reflections(self.lm, self.layout, prefixes * (votes + 1), sample_seeds=[None] * n + seeds)
        return tally(texts[:n], said[:n], [texts[n + j::n] for j in range(n)], [said[n + j::n] for j in range(n)],
                     threshold)

    def revise(self, prompts: list[str], images: list[np.ndarray], instructions: list[str],
               seeds: list[int]) -> list[np.ndarray]:
        """A reflection that asks to `regenerate` gets a fresh drawing of the prompt (as the loop does):
        a revision conditioned on the image it rejects copies too much of it (measured: 2 of 51 right
        against 20 of 114 fresh drawings of the same prompts, dev)."""
        if not prompts:
            return []
        redraw = [k for k, i in enumerate(instructions) if i == REGENERATE]
        change = [k for k in range(len(prompts)) if instructions[k] != REGENERATE]
        drawings = self._drawings([prompts[k] for k in redraw], [seeds[k] for k in redraw])
        changes = self._changes([self.layout.revise_prefix(prompts[k], instructions[k]) for k in change],
                                [images[k] for k in change], [seeds[k] for k in change])
        codes = torch.cat(sample_spans(self.lm, self.layout, [drawings, changes]))  # one generate for both
        made = dict(zip(redraw + change, decode(self.vq, codes)))
        return [made[k] for k in range(len(prompts))]

    def edit(self, images: list[np.ndarray], instructions: list[str], seeds: list[int]) -> list[np.ndarray]:
        return self._transform([self.layout.edit_prefix(i) for i in instructions], images, seeds)

    def _transform(self, prefixes: list[list[int]], images: list[np.ndarray], seeds: list[int]) -> list[np.ndarray]:
        return list(decode(self.vq, sample_spans(self.lm, self.layout, [self._changes(prefixes, images, seeds)])[0]))
