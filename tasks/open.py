"""The open task: any free-text prompt, any instruction, no verifier. A round is right or wrong
when a judge is configured (its score against the task's threshold), else unknown."""

from __future__ import annotations

from tasks.base import SuitePrompt, Task

# A small fixed suite for `bench --suite demo` on any models: one or two prompts per family.
DEMO = {
    "objects": ["a cat wearing a red hat", "a photo of a cat riding a skateboard"],
    "colors": ["a yellow umbrella next to a green bicycle", "a blue car parked in front of a white house"],
    "counting": ["three apples on a wooden table", "two dogs playing in the snow"],
    "spatial": ["a lamp to the left of a sofa", "a bird sitting above a clock"],
    "text": ["a street sign that says 'refloop'"],
}


class OpenTask(Task):
    name = "open"
    suites = ("demo",)
    families = tuple(DEMO)

    def suite(self, name: str, per_family: int | None = None) -> list[SuitePrompt]:
        if name != "demo":
            return super().suite(name, per_family)
        return [SuitePrompt(id=f"demo-{family}-{k}", prompt=prompt, family=family, seed=1000 * n + k)
                for n, (family, prompts) in enumerate(DEMO.items())
                for k, prompt in enumerate(prompts[:per_family])]
