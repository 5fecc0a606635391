"""The critic's conversation, the same for every VLM backend (local transformers or served).

Without history a critique is one user turn: the image, then the template with the session's prompt.
With history (the session's earlier rounds, oldest first, as Reflect-DiT and OmniGen2 show them) the
conversation replays them: the first earlier image with the template, the critic's own reflection
on it as an assistant turn, then each later image with the follow-up, and last the current image with
the follow-up. Each backend passes its own way of putting an image in a message (a PIL image for a
processor's chat template, a data URL for a server), so both send the same turns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from policies.critique import CRITIC_TEMPLATE

# The critic's default words are the task's (tasks/: the loop fills a template a config leaves out);
# the general reflection format of policies/critique.py when there is no task. VQAScore's question.
JUDGE_TEMPLATE = "Does this image show {prompt}? Answer yes or no."
FOLLOWUP = "This is the image after that edit. Check it against the prompt again, in the same format."

# One row's history: its earlier rounds, oldest first, as (image, the reflection written on it).
History = Sequence[tuple[np.ndarray, str]]


def check_history(history: Sequence[History] | None, rows: int) -> list[History]:
    """One (possibly empty) history per row; ValueError when the lengths disagree."""
    if history is None:
        return [[] for _ in range(rows)]
    if len(history) != rows:
        raise ValueError(f"{rows} rows, {len(history)} histories")
    return [list(h or []) for h in history]


def critic_messages(prompt: str, image: np.ndarray, history: History, template: str | None, followup: str,
                    image_part: Callable[[np.ndarray], dict[str, Any]], plain_assistant: bool = False,
                    ) -> list[dict[str, Any]]:
    """OpenAI-style chat messages for one row (content parts: `image_part(img)` and text parts). A server
    gets the assistant's turns as plain strings (what every OpenAI-compatible server reads); a processor's
    chat template gets content parts like the user's."""
    ask = (template or CRITIC_TEMPLATE).replace("{prompt}", prompt)
    again = followup.replace("{prompt}", prompt)
    messages: list[dict[str, Any]] = []
    for k, (earlier, reflection) in enumerate(history):
        messages.append({"role": "user", "content": [image_part(earlier), text_part(ask if k == 0 else again)]})
        messages.append({"role": "assistant", "content": reflection if plain_assistant else [text_part(reflection)]})
    messages.append({"role": "user", "content": [image_part(image), text_part(again if history else ask)]})
    return messages


def has_prompt(template: str | None) -> str | None:
    """A pydantic check: the message beside the image must carry the session's prompt (None: the task's)."""
    if template is not None and "{prompt}" not in template:
        raise ValueError("the template must contain {prompt}")
    return template


def text_part(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}
