"""A vision-language model behind an OpenAI-compatible server, in the Critic and Judge roles.

    models:
      critic: {kind: served, base_url: http://localhost:8000/v1, model: Qwen/Qwen2.5-VL-7B-Instruct}
      judge:  {kind: served, base_url: http://localhost:8000/v1, model: Qwen/Qwen2.5-VL-7B-Instruct}

Images go as base64 PNG data URLs inside the messages (lossless, no file shared with the server). The
critic sends the same conversation as the local transformers critic (model/backends/chat.py), the
session's earlier rounds included when the loop passes them. The judge asks a yes/no question and
scores P(yes) from the first answer token's `top_logprobs`, normalised over the yes and no tokens
(VQAScore, as model/backends/hf_vlm.py does locally). A server that returns no logprobs (`transformers
serve` ignores the field), or whose top tokens hold neither word, gets the fallback: 1.0 when the
answer's first word is a yes word, else 0.0, and the score's reason says so (the trajectory records
it as the round's judge_reason). `require_logprobs: true` makes that an error instead.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections import Counter
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from model.backends.chat import (
    FOLLOWUP,
    JUDGE_TEMPLATE,
    History,
    check_history,
    critic_messages,
    has_prompt,
    text_part,
)
from model.backends.served_client import ServedModel, ServedModelError, ServerConfig


class ServedCriticConfig(ServerConfig):
    supports_history: ClassVar[bool] = True  # earlier rounds go in as a multi-image conversation (chat.py)
    kind: Literal["served"] = "served"
    template: str | None = None  # the message beside the image, {prompt} the session's; None: the task's words
    followup: str = FOLLOWUP  # the message beside each later image when the critic sees the session's history
    max_tokens: int = Field(400, ge=1)  # room for the reflection
    temperature: float = Field(0.0, ge=0)  # 0: greedy

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, template: str | None) -> str | None:
        return has_prompt(template)


class ServedJudgeConfig(ServerConfig):
    kind: Literal["served"] = "served"
    template: str = JUDGE_TEMPLATE  # the yes/no question; {prompt} is the session's prompt
    yes_words: list[str] = ["yes"]  # first tokens counted as yes, in any case, spaces ignored (quote them in YAML)
    no_words: list[str] = ["no"]
    top_logprobs: int = Field(20, ge=1, le=20)  # alternatives of the first token asked for (the API allows 20)
    logprobs: bool = True  # ask for logprobs; false for a server that refuses the field
    require_logprobs: bool = False  # true: a server without logprobs is an error, not the 1.0/0.0 fallback

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, template: str | None) -> str | None:
        return has_prompt(template)


def data_url(image: np.ndarray) -> str:
    """A uint8 (H, W, 3) image as a PNG data URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def url_part(image: np.ndarray) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(image)}}


class ServedCritic:
    """Reflections from the served model, one request per row (sent concurrently, bounded)."""

    runs_here = False  # its batches run on the server's hardware: no turn with this machine's models

    def __init__(self, cfg: ServedCriticConfig):
        self.cfg = cfg
        self.server = ServedModel(cfg, "critic")
        self.path = self.server.path

    def messages(self, prompt: str, image: np.ndarray, history: History = ()) -> list[dict]:
        return critic_messages(prompt, image, history, self.cfg.template, self.cfg.followup, url_part,
                               plain_assistant=True)

    def critique(self, prompts: list[str], images: list[np.ndarray],
                 history: list[History] | None = None) -> list[str]:
        """The reflection text of each row (policies.critique parses it). `history`: per row, the session's
        earlier rounds (image, reflection), oldest first; None or [] is the image alone."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts, {len(images)} images")
        chats = [self.messages(p, i, h) for p, i, h in zip(prompts, images, check_history(history, len(prompts)))]
        replies = self.server.chat(chats, max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature)
        texts = [reply.choices[0].message.content for reply in replies]
        if any(not isinstance(t, str) for t in texts):
            raise ServedModelError(f"the served critic at {self.cfg.base_url} answered without text (content is "
                                   "null); check that models.critic.model is a chat model")
        return [t.strip() for t in texts]


class JudgeScore(float):
    """A score with the reason the trajectory records beside it (rewards.base.as_scored reads `reason`)."""

    reason: str

    def __new__(cls, value: float, reason: str) -> JudgeScore:
        score = super().__new__(cls, value)
        score.reason = reason
        return score


def word(token: str) -> str:
    """'▁Yes', ' yes', 'YES.' -> 'yes': the letters of a token, lower case."""
    return re.sub(r"[^a-z]", "", token.lower())


def yes_probability(choice, yes: set[str], no: set[str]) -> float | None:
    """P(yes) over the yes and no tokens among the first token's top logprobs; None when there are none."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    first = content[0]
    alternatives = list(first.top_logprobs or []) or [first]
    p_yes = sum(math.exp(a.logprob) for a in alternatives if word(a.token) in yes)
    p_no = sum(math.exp(a.logprob) for a in alternatives if word(a.token) in no)
    if p_yes + p_no == 0:
        return None
    return p_yes / (p_yes + p_no)


class ServedJudge:
    """VQAScore from the served model: P(yes) to the template's question, one request per row."""

    runs_here = False

    def __init__(self, cfg: ServedJudgeConfig):
        self.cfg = cfg
        self.yes, self.no = {word(w) for w in cfg.yes_words}, {word(w) for w in cfg.no_words}
        if shared := self.yes & self.no:
            raise ValueError(f"{sorted(shared)} count as both yes and no")
        self.params = {"logprobs": True, "top_logprobs": cfg.top_logprobs} if cfg.logprobs else {}
        try:
            self.server = ServedModel(cfg, "judge", probe=self.params)
        except ServedModelError as e:
            if cfg.logprobs and "logprob" in str(e).lower():  # a server that refuses the logprobs fields
                raise ServedModelError(f"{e}; if it refuses logprobs, set models.judge.logprobs: false") from None
            raise
        self.path = self.server.path
        self.scored_by: Counter[str] = Counter()  # "logprobs" or "text": how each score was made

    def score(self, prompts: list[str], images: list[np.ndarray]) -> list[JudgeScore]:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts, {len(images)} images")
        chats = [[{"role": "user", "content": [url_part(i), text_part(self.cfg.template.replace("{prompt}", p))]}]
                 for p, i in zip(prompts, images)]
        replies = self.server.chat(chats, max_tokens=1, temperature=0.0, **self.params)
        return [self._score(reply.choices[0]) for reply in replies]

    def _score(self, choice) -> JudgeScore:
        p = yes_probability(choice, self.yes, self.no) if self.cfg.logprobs else None
        if p is not None:
            self.scored_by["logprobs"] += 1
            return JudgeScore(p, f"P(yes) {p:.3f} from the first token's top {self.cfg.top_logprobs} logprobs")
        if self.cfg.require_logprobs:
            raise ServedModelError(f"the served judge at {self.cfg.base_url} returned no logprobs of yes or no; "
                                   "use a server that returns them (vLLM, SGLang) or set "
                                   "models.judge.require_logprobs: false")
        answer = (choice.message.content or "").strip()
        first = word(answer.split()[0]) if answer.split() else ""
        self.scored_by["text"] += 1
        return JudgeScore(float(first in self.yes), f"answer {answer[:20]!r} scored {float(first in self.yes):.0f} "
                                                    "from its text (the server returned no logprobs of yes or no)")
