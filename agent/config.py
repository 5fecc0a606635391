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

JudgeConfig = Annotated[HFVLMJudgeConfig | ServedJudgeConfig | LearnedRewardConfig | UnifiedBackendConfig,
                        Field(discriminator="kind")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Models(Strict):
    image: ImageConfig = UnifiedBackendConfig()  # generator and editor; kind: unified (default) | diffusers
    critic: CriticConfig = UnifiedBackendConfig()  # kind: unified (default) | hf_vlm | served
    judge: JudgeConfig | None = None  # kind: unified | hf_vlm | served | learned; used when search.judge is "model"


class RunConfig(Strict):
    seed: int = 0
    concurrency: int = Field(32, ge=1)  # sessions in flight
    max_batch: int = Field(32, ge=1)  # rows per model call
    models: Models = Models()
    stop: StopPolicy = StopPolicy()
    search: SearchPolicy = SearchPolicy()

    @model_validator(mode="after")
    def _model_judge(self) -> RunConfig:
        if self.search.judge == "model" and self.models.judge is None:
            raise ValueError("search.judge 'model' needs a judge in models.judge (kind: unified, learned or hf_vlm)")
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
