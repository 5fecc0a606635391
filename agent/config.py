"""RunConfig: the one schema of a run (YAML + CLI flags), validated before anything is written."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.critic.backend import CriticBackendConfig
from model.shapeworld.backend import ShapeWorldImageConfig
from policies.search import SearchPolicy
from policies.stop import StopPolicy


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Models(Strict):
    image: ShapeWorldImageConfig = ShapeWorldImageConfig()  # generator and editor
    critic: CriticBackendConfig = CriticBackendConfig()


class RunConfig(Strict):
    seed: int = 0
    concurrency: int = Field(32, ge=1)  # sessions in flight
    max_batch: int = Field(32, ge=1)  # rows per model call
    models: Models = Models()
    stop: StopPolicy = StopPolicy()
    search: SearchPolicy = SearchPolicy()

    @classmethod
    def load(cls, path: str | Path | None, **overrides) -> RunConfig:
        """YAML (or defaults), then flat overrides like max_rounds=4; ValueError says what is wrong."""
        data = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ValueError(f"no such config file: {path}")
            data = yaml.safe_load(path.read_text()) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a mapping at the top level")
        if overrides.get("max_rounds") is not None:
            data.setdefault("stop", {})["max_rounds"] = overrides["max_rounds"]
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            where = ", ".join(".".join(map(str, err["loc"])) + f": {err['msg']}" for err in e.errors())
            raise ValueError(f"invalid run config: {where}") from None
