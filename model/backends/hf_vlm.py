"""Any local transformers vision-language model behind the Critic and Judge roles.

The critic asks the model to reflect on an image in the format of policies/critique.py and returns
its text. The judge asks a yes/no question and scores the image as VQAScore does: the probability
of "Yes" for the first answer token, normalised over the yes and no tokens only (every case
variant of each word counts), so a model that would rather say something else still gives a score.

Both build their inputs with the processor's own chat template (`apply_chat_template` with the
images in the messages), so any `AutoModelForImageTextToText` checkpoint works as saved. The critic
may be given the session's earlier rounds: they go first, as a multi-image conversation
(model/backends/chat.py, the same turns the served critic sends).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.backends.chat import (
    CRITIC_TEMPLATE,
    FOLLOWUP,
    JUDGE_TEMPLATE,
    History,
    check_history,
    critic_messages,
    has_prompt,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class VLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str  # folder with the model and its processor (save_pretrained of both)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    template: str  # the user's message next to the image; {prompt} is replaced by the session's prompt

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, template: str) -> str:
        return has_prompt(template)


class HFVLMCriticConfig(VLMConfig):
    kind: Literal["hf_vlm"] = "hf_vlm"
    template: str = CRITIC_TEMPLATE
    followup: str = FOLLOWUP  # the message beside each later image when the critic sees the session's history
    max_new_tokens: int = Field(160, ge=1)


class HFVLMJudgeConfig(VLMConfig):
    kind: Literal["hf_vlm"] = "hf_vlm"
    template: str = JUDGE_TEMPLATE
    yes_words: list[str] = ["yes"]  # answers counted as yes, each in every case ("yes", "Yes", "YES")
    no_words: list[str] = ["no"]  # (in YAML, quote them: a bare yes or no is a boolean)


def load_vlm(path: str | Path, dtype: str, device: str):
    """Model and processor from one local folder, or FileNotFoundError naming it (never downloads)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no transformers vision-language model at {folder}: config.json is missing")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=DTYPES[dtype], local_files_only=True)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:  # batches are padded; Llama-style tokenizers have no pad token
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), processor


class VLM:
    """One model and its processor; calls take turns (a worker thread per role)."""

    def __init__(self, cfg: VLMConfig):
        self.cfg = cfg
        self.path = Path(cfg.path).expanduser()
        self.model, self.processor = load_vlm(cfg.path, cfg.dtype, cfg.device)
        self._lock = threading.Lock()

    def inputs(self, prompts: list[str], images: list[np.ndarray], history: list[History] | None = None):
        """One chat per row: the image, then the template with the prompt (after the row's earlier rounds,
        see model/backends/chat.py); left-padded, so that every row's next token comes right after its
        own prompt."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts, {len(images)} images")
        followup = getattr(self.cfg, "followup", FOLLOWUP)
        chats = [critic_messages(prompt, image, earlier, self.cfg.template, followup, pil_part)
                 for prompt, image, earlier in zip(prompts, images, check_history(history, len(prompts)))]
        batch = self.processor.apply_chat_template(
            chats, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"})
        return batch.to(self.cfg.device, dtype=self.model.dtype)  # pixels in the model's dtype; ids stay ints

    @torch.inference_mode()
    def answer(self, prompts: list[str], images: list[np.ndarray], history=None, **kwargs):
        """Greedy generation; (inputs, output ids or generate's dict)."""
        batch = self.inputs(prompts, images, history)
        with self._lock:
            return batch, self.model.generate(**batch, do_sample=False, **kwargs)


def pil_part(image: np.ndarray) -> dict:
    return {"type": "image", "image": Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")}


class HFVLMCritic(VLM):
    cfg: HFVLMCriticConfig

    def critique(self, prompts: list[str], images: list[np.ndarray],
                 history: list[History] | None = None) -> list[str]:
        """Greedy reflections, the text only (policies.critique parses it). `history`: per row, the
        session's earlier rounds (image, reflection), oldest first; None or [] is the image alone."""
        batch, out = self.answer(prompts, images, history, max_new_tokens=self.cfg.max_new_tokens)
        new = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def answer_ids(tokenizer, words: list[str]) -> list[int]:
    """Ids of the single tokens that spell one of the words, in any case, with or without a leading space."""
    ids = set()
    for word in words:
        for variant in {word.lower(), word.capitalize(), word.upper()}:
            for text in (variant, " " + variant):
                tokens = tokenizer.encode(text, add_special_tokens=False)
                if len(tokens) == 1:
                    ids.add(tokens[0])
    if not ids:
        raise ValueError(f"none of {words} is a single token of this model's tokenizer")
    return sorted(ids)


class HFVLMJudge(VLM):
    cfg: HFVLMJudgeConfig

    def __init__(self, cfg: HFVLMJudgeConfig):
        super().__init__(cfg)
        tokenizer = self.processor.tokenizer
        self.yes_ids, self.no_ids = answer_ids(tokenizer, cfg.yes_words), answer_ids(tokenizer, cfg.no_words)
        if shared := set(self.yes_ids) & set(self.no_ids):
            raise ValueError(f"tokens {tokenizer.convert_ids_to_tokens(sorted(shared))} count as both yes and no")

    def yes_no(self, prompts: list[str], images: list[np.ndarray]) -> np.ndarray:
        """(N, 2): P(yes), P(no) of the first answer token, over the yes and no tokens only."""
        _, out = self.answer(prompts, images, max_new_tokens=1, output_logits=True, return_dict_in_generate=True)
        logits = out.logits[0].float()  # the raw logits of the first generated position, (N, vocab)
        probs = logits[:, self.yes_ids + self.no_ids].softmax(dim=-1)
        split = len(self.yes_ids)
        return torch.stack([probs[:, :split].sum(dim=-1), probs[:, split:].sum(dim=-1)], dim=-1).cpu().numpy()

    def score(self, prompts: list[str], images: list[np.ndarray]) -> list[float]:
        """VQAScore: P(yes) that the image shows the prompt."""
        return [float(p) for p in self.yes_no(prompts, images)[:, 0]]
