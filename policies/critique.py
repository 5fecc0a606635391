"""The reflection: what the critic sees, what is wrong, the verdict, ONE free-text instruction.

The canonical text (what `Critique.text` writes and the embedded model learned):

    seen: a red circle (top left); a blue square (bottom right)
    wrong: the circle is not below the square (it is above it)
    verdict: wrong
    edit: move the circle below the square

Observations come first and the instruction last, so that a model writes its evidence before its
conclusion. `edit: regenerate` asks for a fresh generation when no edit can mend the image.
The instruction is free text here; a task may check it further (ShapeWorld: its edit grammar),
through the `check` argument of `parse_critique`. The parser reads what real VLMs write
(policies/critique_parse.py); a text it cannot read raises CritiqueError, which the loop records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, model_validator

REGENERATE = "regenerate"
FIELDS = ("seen", "wrong", "verdict", "edit")

CRITIC_TEMPLATE = """This image was generated for the prompt: "{prompt}".
Check the image against the prompt. Answer in exactly this format, one field a line:
seen: what the image shows, separated by ';'
wrong: what does not match the prompt, separated by ';' (or: nothing)
verdict: right or wrong
edit: ONE instruction for an image editor that fixes the image (only when the verdict is wrong), \
or: regenerate (when no single edit can fix it)
Example:
seen: a cat on a skateboard; a blue hat on the cat
wrong: the hat is blue, not red
verdict: wrong
edit: make the hat red"""


class CritiqueError(ValueError):
    """A reflection that does not follow the format (the message says where)."""


class Critique(BaseModel):
    verdict: Literal["right", "wrong"]
    observations: list[str] = []
    defects: list[str] = []
    instruction: str | None = None  # one free-text instruction, or "regenerate"

    @model_validator(mode="after")
    def _consistent(self) -> Critique:
        if self.verdict == "right" and self.instruction is not None:
            raise ValueError("a right image needs no edit")
        if self.verdict == "wrong" and self.instruction is None:
            raise ValueError("a wrong image needs one edit (or 'regenerate')")
        return self

    @property
    def text(self) -> str:
        lines = [f"seen: {'; '.join(self.observations) or 'nothing'}",
                 f"wrong: {'; '.join(self.defects) or 'nothing'}",
                 f"verdict: {self.verdict}"]
        if self.instruction:
            lines.append(f"edit: {self.instruction}")
        return "\n".join(lines)


Check = Callable[[str], str]  # an instruction in, the instruction the task keeps out; ValueError says why not


def parse_critique(text: str, check: Check | None = None) -> Critique:
    """Read a reflection written by a model or a person; CritiqueError says what is missing or
    unreadable. `check` (a task's) validates and normalises an instruction other than regenerate."""
    from policies.critique_parse import read_fields

    fields = read_fields(text)
    instruction = fields.instruction
    if instruction is not None and instruction != REGENERATE and check is not None:
        try:
            instruction = check(instruction)
        except ValueError as e:
            raise CritiqueError(str(e)) from None
    try:
        return Critique(verdict=fields.verdict, observations=fields.observations, defects=fields.defects,
                        instruction=instruction)
    except ValueError as e:
        msg = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
        raise CritiqueError(msg.removeprefix("Value error, ")) from None
