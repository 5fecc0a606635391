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

# The defaults of every VLM critic and judge: the reflection format of policies/critique.py, and VQAScore's question.
CRITIC_TEMPLATE = """This image was generated for the prompt: "{prompt}".
Check the image against the prompt. Answer in exactly this format, one field a line:
seen: the objects you see, each with its colour and place, separated by ';'
wrong: what does not match the prompt, separated by ';' (or: nothing)
verdict: right or wrong
edit: ONE instruction that fixes the image (only when the verdict is wrong)
An edit is one of: add two yellow squares | remove the blue square | make the green triangle red | \
move the red circle below the blue square | regenerate (when no single edit can fix it).
Example:
seen: a red circle (top left); a blue square (bottom right)
wrong: the circle is not below the square (it is above it)
verdict: wrong
edit: move the red circle below the blue square"""

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


def critic_messages(prompt: str, image: np.ndarray, history: History, template: str, followup: str,
                    image_part: Callable[[np.ndarray], dict[str, Any]], plain_assistant: bool = False,
                    ) -> list[dict[str, Any]]:
    """OpenAI-style chat messages for one row (content parts: `image_part(img)` and text parts). A server
    gets the assistant's turns as plain strings (what every OpenAI-compatible server reads); a processor's
    chat template gets content parts like the user's."""
    ask = template.replace("{prompt}", prompt)
    again = followup.replace("{prompt}", prompt)
    messages: list[dict[str, Any]] = []
    for k, (earlier, reflection) in enumerate(history):
        messages.append({"role": "user", "content": [image_part(earlier), text_part(ask if k == 0 else again)]})
        messages.append({"role": "assistant", "content": reflection if plain_assistant else [text_part(reflection)]})
    messages.append({"role": "user", "content": [image_part(image), text_part(again if history else ask)]})
    return messages


def has_prompt(template: str) -> str:
    """A pydantic check: the message beside the image must carry the session's prompt."""
    if "{prompt}" not in template:
        raise ValueError("the template must contain {prompt}")
    return template


def text_part(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}
