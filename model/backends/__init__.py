"""Model backends chosen by YAML: `kind` picks the backend of each role, the rest configures it.

    models:
      image:  {kind: diffusers, path: /models/sd, edit_path: /models/ip2p}   # or kind: unified (the default)
      critic: {kind: hf_vlm, path: /models/llava}                          # or kind: unified (the default)
      judge:  {kind: hf_vlm, path: /models/llava}                          # or kind: unified, or learned
      critic: {kind: served, base_url: http://localhost:8000/v1, model: NAME}  # an OpenAI-compatible server

A role without `kind` is the embedded unified model (one network draws, edits, reflects and judges).
Each `load_*` builds the backend its config names; a missing folder raises FileNotFoundError naming it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Discriminator, Tag

from model.backends.diffusers_image import DiffusersImageConfig, DiffusersImageModel
from model.backends.hf_vlm import HFVLMCritic, HFVLMCriticConfig, HFVLMJudge, HFVLMJudgeConfig
from model.backends.served import ServedCritic, ServedCriticConfig, ServedJudge, ServedJudgeConfig
from model.backends.served_client import ServedModelError
from model.roles import Critic, Editor, Generator, Judge
from model.unified.config import UnifiedBackendConfig


def kind_or(default: str):
    """A discriminator that reads `kind` and falls back to the embedded backend when it is absent."""

    def kind(value: Any) -> str:
        return value.get("kind", default) if isinstance(value, dict) else getattr(value, "kind", default)

    return Discriminator(kind)


ImageConfig = Annotated[
    Annotated[UnifiedBackendConfig, Tag("unified")] | Annotated[DiffusersImageConfig, Tag("diffusers")],
    kind_or("unified"),
]
CriticConfig = Annotated[
    Annotated[UnifiedBackendConfig, Tag("unified")] | Annotated[HFVLMCriticConfig, Tag("hf_vlm")]
    | Annotated[ServedCriticConfig, Tag("served")],
    kind_or("unified"),
]
JudgeConfig = HFVLMJudgeConfig | ServedJudgeConfig | UnifiedBackendConfig  # the exact verifier: search.judge


def _unified(cfg: UnifiedBackendConfig):
    from model.unified.backend import UnifiedRoles  # torch and transformers: only when used

    return UnifiedRoles(cfg)


def load_image_model(cfg) -> Generator | Editor:
    """The generator/editor (one object, both roles) a config names."""
    if isinstance(cfg, UnifiedBackendConfig):
        return _unified(cfg)
    return DiffusersImageModel(cfg)


def load_critic(cfg) -> Critic:
    if isinstance(cfg, UnifiedBackendConfig):
        return _unified(cfg)
    if isinstance(cfg, ServedCriticConfig):
        return ServedCritic(cfg)
    return HFVLMCritic(cfg)


def load_judge(cfg) -> Judge:
    if isinstance(cfg, UnifiedBackendConfig):
        return _unified(cfg)
    if isinstance(cfg, ServedJudgeConfig):
        return ServedJudge(cfg)
    return HFVLMJudge(cfg)


__all__ = [
    "CriticConfig", "DiffusersImageConfig", "DiffusersImageModel", "HFVLMCritic", "HFVLMCriticConfig", "HFVLMJudge",
    "HFVLMJudgeConfig", "ImageConfig", "JudgeConfig", "ServedCritic", "ServedCriticConfig", "ServedJudge",
    "ServedJudgeConfig", "ServedModelError", "UnifiedBackendConfig", "load_critic",
    "load_image_model", "load_judge",
]
