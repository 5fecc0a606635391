"""The Task seam: what the loop needs to know about a domain, with the defaults of free text.

A task says which prompts it takes (and their family, for per-family metrics), which prompt
suites it ships for `bench`, whether it has an exact verifier (recorded as a reward and as each
round's ground truth, never shown to the loop), the words that ask a critic to reflect, and how
an instruction is checked. Subclass it for your own domain and name it in the run config.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from policies.critique import CRITIC_TEMPLATE, Critique, parse_critique


class SuitePrompt(BaseModel):
    """One prompt of a fixed suite: a session of `bench` or `run --suite`."""

    id: str
    prompt: str
    family: str | None = None
    seed: int = 0


class Verdict(BaseModel):
    ok: bool
    reason: str


class Task:
    name = "task"
    critic_template: str = CRITIC_TEMPLATE  # {prompt} is the session's prompt
    suites: tuple[str, ...] = ()  # names `suite` accepts; the first is bench's default
    families: tuple[str, ...] = ()  # prompt families, for per-family metrics
    has_verifier = False
    judge_threshold = 0.5  # without a verifier, a round is right when the judge scores it at least this

    def check_prompt(self, prompt: str) -> str | None:
        """The prompt's family (None: no family); ValueError says why the task cannot take it."""
        return None

    def suite(self, name: str, per_family: int | None = None) -> list[SuitePrompt]:
        raise ValueError(f"the {self.name} task has no suites" if not self.suites else
                         f"unknown suite; the {self.name} task has {', '.join(self.suites)}")

    def verify(self, prompt: str, image: np.ndarray) -> Verdict:
        """The exact verdict on an image (only when has_verifier)."""
        raise NotImplementedError(f"the {self.name} task has no verifier")

    def check_instruction(self, instruction: str) -> str:
        """The instruction the loop carries out; ValueError says why it cannot be."""
        return instruction

    def parse_critique(self, text: str) -> Critique:
        """The general parse (policies/critique.py), then this task's check of the instruction."""
        return parse_critique(text, check=self.check_instruction)
