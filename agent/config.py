"""RunConfig: the one schema of a run (YAML + CLI flags), validated before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.backends import CriticConfig, HFVLMJudgeConfig, ImageConfig, ServedJudgeConfig, UnifiedBackendConfig
from model.recipe import read_yaml
from policies.search import SearchPolicy
from policies.stop import StopPolicy
from rewards.learned import LearnedRewardConfig
from tasks import load_task

JudgeConfig = Annotated[HFVLMJudgeConfig | ServedJudgeConfig | LearnedRewardConfig | UnifiedBackendConfig,
                        Field(discriminator="kind")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Models(Strict):
    image: ImageConfig = UnifiedBackendConfig()  # generator and editor; kind: unified (default) | diffusers
    critic: CriticConfig = UnifiedBackendConfig()  # kind: unified (default) | hf_vlm | served
    judge: JudgeConfig | None = None  # kind: unified | hf_vlm | served | learned; used when search.judge is "model"


class RunConfig(Strict):
    task: str = "shapeworld"  # shapeworld | open | an import path my_pkg.tasks:MyTask (tasks/__init__.py)
    history: int = Field(0, ge=0)  # earlier rounds (images and reflections) the critic sees; 0: none
    seed: int = 0
    concurrency: int = Field(32, ge=1)  # sessions in flight
    max_batch: int = Field(32, ge=1)  # rows per model call
    models: Models = Models()
    stop: StopPolicy = StopPolicy()
    search: SearchPolicy = SearchPolicy()

    @model_validator(mode="after")
    def _keep_best_by_default(self) -> RunConfig:
        """The embedded critic, and nothing said about judging: its own P(right) scores every round (the
        judge reuses the critic's reflection, so no extra model call) and a session ends on its best-scored
        round, not its last (dev: Acc@final 0.814 -> 0.826, c->i 0.009 -> 0.004; README, "Ending on the best
        round"). Say `stop.final: last`, `search.judge` or `models.judge` to choose otherwise."""
        said = ("judge" in self.models.model_fields_set or "judge" in self.search.model_fields_set
                or "final" in self.stop.model_fields_set)
        if self.models.critic.kind == "unified" and not said:
            self.models = self.models.model_copy(update={"judge": self.models.critic})
            self.search = self.search.model_copy(update={"judge": "model"})
            self.stop = self.stop.model_copy(update={"final": "best"})
        return self

    @model_validator(mode="after")
    def _model_judge(self) -> RunConfig:
        if self.search.judge == "model" and self.models.judge is None:
            raise ValueError("search.judge 'model' needs a judge in models.judge (kind: unified, learned or hf_vlm)")
        if self.stop.final == "best" and self.search.judge is None:
            raise ValueError("stop.final 'best' keeps the round the judge scores highest: set search.judge "
                             "(model, with models.judge) so that every round is scored")
        return self

    @model_validator(mode="after")
    def _task(self) -> RunConfig:
        task = load_task(self.task)  # ValueError names a task that cannot be found
        if self.search.judge == "verifier" and not task.has_verifier:
            raise ValueError(f"search.judge 'verifier': the {task.name} task has no exact verifier; "
                             "use judge: model with a judge in models.judge")
        return self

    @model_validator(mode="after")
    def _history(self) -> RunConfig:
        critic = self.models.critic
        if self.history and not getattr(critic, "supports_history", False):
            raise ValueError(f"history: {self.history} needs a critic that sees earlier rounds, and kind "
                             f"{critic.kind!r} does not; use a critic of kind hf_vlm, or history: 0")
        return self

    @classmethod
    def load(cls, path: str | Path | None, **overrides) -> RunConfig:
        """YAML (or defaults), then flat overrides like max_rounds=4; ValueError says what is wrong."""
        data = read_yaml(path) if path is not None else {}
        if overrides.get("max_rounds") is not None:
            data.setdefault("stop", {})["max_rounds"] = overrides["max_rounds"]
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            where = ", ".join(".".join(map(str, err["loc"])) + f": {err['msg']}" for err in e.errors())
            raise ValueError(f"invalid run config: {where}") from None
