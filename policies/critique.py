"""The reflection's text format: what the critic sees, what is wrong, the verdict, ONE edit.

    seen: a red circle (top left); a blue square (bottom right)
    wrong: the circle is not below the square (it is above it)
    verdict: wrong
    edit: move the circle below the square

Observations come first and the edit last, so that a model writes its evidence before its
conclusion. `edit: regenerate` asks for a fresh generation when no edit can mend the image.
A text that does not follow the format raises CritiqueError: the loop records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, model_validator

from world import PromptError, parse_edit, parse_prompt, verify
from world.fix import fixing_edit
from world.parse import Blob, ParsedObject
from world.spec import CANVAS

REGENERATE = "regenerate"
FIELDS = ("seen", "wrong", "verdict", "edit")


class CritiqueError(ValueError):
    """A reflection that does not follow the format (the message says where)."""


class Critique(BaseModel):
    verdict: Literal["right", "wrong"]
    observations: list[str] = []
    defects: list[str] = []
    instruction: str | None = None  # an edit in the world's grammar, or "regenerate"

    @model_validator(mode="after")
    def _consistent(self) -> Critique:
        if self.verdict == "right" and self.instruction is not None:
            raise ValueError("a right image needs no edit")
        if self.verdict == "wrong" and self.instruction is None:
            raise ValueError("a wrong image needs one edit (or 'regenerate')")
        if self.instruction not in (None, REGENERATE):
            parse_edit(self.instruction)  # PromptError (a ValueError) names the bad word
        return self

    @property
    def text(self) -> str:
        lines = [f"seen: {'; '.join(self.observations) or 'nothing'}",
                 f"wrong: {'; '.join(self.defects) or 'nothing'}",
                 f"verdict: {self.verdict}"]
        if self.instruction:
            lines.append(f"edit: {self.instruction}")
        return "\n".join(lines)


def parse_critique(text: str) -> Critique:
    """Read a reflection written by a model; CritiqueError says what is missing or unreadable."""
    fields: dict[str, str] = {}
    for line in text.strip().splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or key not in FIELDS:
            continue  # a model may think aloud between the fields
        if key in fields:
            raise CritiqueError(f"the field {key!r} appears twice")
        fields[key] = value.strip().rstrip(".")
    if "verdict" not in fields:
        raise CritiqueError("no 'verdict:' line")
    verdict = fields["verdict"].lower()
    if verdict not in ("right", "wrong"):
        raise CritiqueError(f"the verdict must be 'right' or 'wrong', not {fields['verdict']!r}")
    split = lambda v: [] if v.lower() in ("", "nothing", "none") else [p.strip() for p in v.split(";")]  # noqa: E731
    instruction = fields.get("edit") or None
    if instruction is not None:
        instruction = " ".join(instruction.lower().split())
    try:
        return Critique(verdict=verdict, observations=split(fields.get("seen", "")),
                        defects=split(fields.get("wrong", "")), instruction=instruction)
    except (ValueError, PromptError) as e:
        msg = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
        raise CritiqueError(msg.removeprefix("Value error, ")) from None


def where(obj: ParsedObject) -> str:
    """Coarse place on a 3x3 grid: 'top left', 'centre', 'bottom', ..."""
    cx, cy = obj.centroid
    col = ("left", "", "right")[min(int(3 * cx / CANVAS), 2)]
    row = ("top", "", "bottom")[min(int(3 * cy / CANVAS), 2)]
    return " ".join(w for w in (row, col) if w) or "centre"


def label_critique(prompt: str, objects: Sequence[ParsedObject], blobs: Sequence[Blob] = ()) -> Critique:
    """The ideal reflection on an image whose objects are known (from the verifier): the
    training label of the critic. Never used at inference."""
    prompt = parse_prompt(prompt)
    verdict = verify(prompt, objects, blobs, tolerance=0.0 if not blobs and _exact(objects) else 1.0)
    seen = [f"a {o.color} {o.shape} ({where(o)})" for o in objects] + [b.description for b in blobs]
    if verdict.ok:
        return Critique(verdict="right", observations=seen)
    edit = fixing_edit(prompt, objects, verdict)
    return Critique(verdict="wrong", observations=seen, defects=[d.message for d in verdict.defects],
                    instruction=edit.text if edit else REGENERATE)


def _exact(objects: Sequence[ParsedObject]) -> bool:
    """Objects of a scene (area None) have exact centroids; objects read off pixels do not."""
    return all(o.area is None for o in objects)
