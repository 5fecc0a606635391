"""Prompt grammar: text <-> Prompt (groups of counted, optionally coloured shapes, one relation).

    prompt   := group ( ("and" group)* | relation group )
    group    := number [color] noun            number: a an one two three four
    relation := "to the left of" | "to the right of" | "above" | "below"

A prompt names the WHOLE scene, so `Prompt.total` is the exact object count.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from world.spec import (
    COLOR_NAMES,
    COUNT_WORDS,
    MAX_COUNT,
    MAX_OBJECTS,
    NUMBER_WORDS,
    PLURALS,
    RELATIONS,
    SHAPES,
    Color,
    Family,
    Relation,
    Shape,
)


class PromptError(ValueError):
    """A prompt (or edit) that does not read; the message names the word."""


class Group(BaseModel):
    """`count` objects of `shape`, all of `color` (None: any colours)."""

    model_config = ConfigDict(frozen=True)

    count: int = Field(ge=1, le=MAX_COUNT)
    color: Color | None = None
    shape: Shape

    @property
    def text(self) -> str:
        return describe(self.count, self.color, self.shape)

    def matches(self, shape: str, color: str) -> bool:
        return shape == self.shape and (self.color is None or color == self.color)


class Prompt(BaseModel):
    model_config = ConfigDict(frozen=True)

    groups: tuple[Group, ...] = Field(min_length=1, max_length=MAX_OBJECTS)
    relation: Relation | None = None

    @model_validator(mode="after")
    def _check(self) -> Prompt:
        if self.relation is not None and len(self.groups) != 2:
            raise ValueError("a relation joins exactly two groups")
        if self.total > MAX_OBJECTS:
            raise ValueError(f"a prompt names at most {MAX_OBJECTS} objects, this one {self.total}")
        return self

    @property
    def total(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def text(self) -> str:
        joiner = f" {self.relation} " if self.relation else " and "
        return joiner.join(g.text for g in self.groups)

    @property
    def family(self) -> Family:
        return family_of(self)

    def __str__(self) -> str:
        return self.text


def describe(count: int, color: str | None, shape: str, definite: bool = False) -> str:
    """`a red circle`, `two squares`, `an orange triangle`; `the red circle(s)` when definite."""
    noun = shape if count == 1 else shape + "s"
    words = [color, noun] if color else [noun]
    if definite:
        return " ".join(["the", *words])
    number = COUNT_WORDS[count]
    if count == 1 and words[0][0] in "aeiou":
        number = "an"
    return " ".join([number, *words])


def family_of(prompt: Prompt) -> Family:
    """Which GenEval-style family a prompt belongs to (anything mixed is `complex`)."""
    gs = prompt.groups
    singles = all(g.count == 1 for g in gs)
    if len(gs) == 1:
        g = gs[0]
        if g.count == 1:
            return "colors" if g.color else "single_object"
        return "counting" if g.color is None else "complex"
    if len(gs) == 2 and singles and gs[0].shape != gs[1].shape:
        colored = [g.color is not None for g in gs]
        if prompt.relation is None:
            if not any(colored):
                return "two_object"
            if all(colored) and gs[0].color != gs[1].color:
                return "color_attr"
        elif not any(colored):
            return "position"
    return "complex"


def tokenize(text: str) -> list[str]:
    return text.strip().rstrip(".").lower().split()


class _Reader:
    """Recursive-descent reader over words; every error names the word it could not read."""

    def __init__(self, text: str):
        self.text = text
        self.words = tokenize(text)
        self.i = 0

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.words[j] if j < len(self.words) else None

    def fail(self, expected: str) -> PromptError:
        word = self.peek()
        if word is None:
            return PromptError(f"{self.text!r} ends too early: expected {expected}")
        return PromptError(f"cannot read {word!r} (word {self.i + 1} of {self.text!r}): expected {expected}")

    def take(self, word: str) -> bool:
        if self.peek() == word:
            self.i += 1
            return True
        return False

    def number(self) -> int:
        word = self.peek()
        if word not in NUMBER_WORDS:
            raise self.fail("a number (a, an, one, two, three, four)")
        self.i += 1
        return NUMBER_WORDS[word]

    def color(self) -> str | None:
        if self.peek() in COLOR_NAMES:
            self.i += 1
            return self.words[self.i - 1]
        return None

    def noun(self, count: int, colored: bool = False) -> str:
        word = self.peek()
        if count == 1 and word in SHAPES:
            self.i += 1
            return word
        if count > 1 and word in PLURALS:
            self.i += 1
            return PLURALS[word]
        if word in SHAPES or word in PLURALS:
            raise self.fail(f"{'a singular' if count == 1 else 'a plural'} shape after that number")
        shapes = "a shape (circle, square, triangle)"
        if colored:
            raise self.fail(shapes)
        raise self.fail("a colour (" + ", ".join(COLOR_NAMES) + ") or " + shapes)

    def group(self) -> Group:
        count = self.number()
        color = self.color()
        return Group(count=count, color=color, shape=self.noun(count, colored=color is not None))

    def selector(self) -> tuple[int | None, str | None, str]:
        """`the [color] shape(s)` (count None: all that match, singular: exactly one) or a group."""
        if self.take("the"):
            color = self.color()
            word = self.peek()
            if word in SHAPES:
                self.i += 1
                return 1, color, word
            if word in PLURALS:
                self.i += 1
                return None, color, PLURALS[word]
            raise self.fail("a colour or a shape")
        g = self.group()
        return g.count, g.color, g.shape

    def relation(self) -> str | None:
        for rel in RELATIONS:
            n = len(rel.split())
            if self.words[self.i : self.i + n] == rel.split():
                self.i += n
                return rel
        return None

    def end(self) -> None:
        if self.peek() is not None:
            raise self.fail("the end of the prompt")


def parse_prompt(text: str | Prompt) -> Prompt:
    """Read a prompt; raises PromptError naming the first word that does not fit."""
    if isinstance(text, Prompt):
        return text
    r = _Reader(text)
    if not r.words:
        raise PromptError("the prompt is empty")
    groups = [r.group()]
    relation = r.relation()
    if relation:
        groups.append(r.group())
        if r.peek() is not None:
            raise r.fail("the end of the prompt (a relation joins exactly two groups)")
    else:
        while r.take("and"):
            groups.append(r.group())
    if r.peek() is not None:
        raise r.fail("'and', a relation (to the left of, to the right of, above, below) or the end")
    try:
        return Prompt(groups=tuple(groups), relation=relation)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        msg = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
        raise PromptError(f"{text!r}: {msg.removeprefix('Value error, ')}") from None
