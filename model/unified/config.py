"""The unified model's recipe (configs/unified.yaml): VQ tokenizer, then the LM, then rounds of
reflection data from the model's own images. One pydantic schema, every key validated."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

from model.recipe import Strict, YamlConfig


class VQConfig(Strict):
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)  # three downsamplings: 64x64 -> 8x8 codes
    layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(32, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    # local codes: the encoder sees one 8x8 patch at a time, so a patch's code depends on its pixels
    # only (the same content is always the same code, keeping a patch is copying its code); off, the
    # encoder sees the whole image and codes depend on their neighbourhood (the first shipped model).
    local_codes: bool = True
    mid_attention: bool = True  # in the encoder (of a patch, with local codes) and the decoder (whole grid)
    num_codes: int = Field(512, ge=2)
    vq_embed_dim: int = Field(16, ge=1)
    steps: int = Field(3000, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    ink_weight: float = Field(5.0, ge=1)  # non-white pixels count this much more: shapes are a small share
    reseed_every: int = Field(100, ge=1)  # codes unused for this many steps restart at an encoder output
    # then the decoder alone, encoder and codebook frozen: codes do not change, so the LM trains on
    # them meanwhile (the two stages may run side by side) and the sharper decoder ships with it
    decoder_steps: int = Field(2500, ge=0)
    decoder_lr: float = Field(5e-4, gt=0)


Task = Literal["draw", "reflect", "revise", "edit"]


class LMConfig(Strict):
    hidden_size: int = Field(160, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(5, ge=1)
    intermediate_size: int = Field(512, ge=16)
    max_positions: int = Field(256, ge=64)
    steps: int = Field(5000, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup: int = Field(200, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    prompt_dropout: float = Field(0.1, ge=0, le=1)  # drawing without its prompt: the unconditional branch of CFG
    # the VQ's codes depend on their neighbourhood, so a kept patch is not always re-encoded to the same
    # code (`world eval unified` reports how often it is): revision and edit targets take the source's
    # code wherever the pixels within this margin are unchanged, so that keeping is copying. From
    # `copy_from_step` on (the shipped run switched mid-way).
    copy_margin: int | None = Field(8, ge=0)  # None: the target's own codes everywhere
    copy_from_step: int = Field(0, ge=0)
    # share of each task in the stream (normalised)
    mix: dict[Task, float] = {"draw": 0.45, "reflect": 0.25, "revise": 0.2, "edit": 0.1}
    # a second mix from step `late_mix_from` on (a continued run can shift toward revisions and edits)
    late_mix: dict[Task, float] | None = None
    late_mix_from: int = Field(0, ge=0)


class GrowConfig(Strict):
    """Before self-play round `round` (0-based) the LM grows into a larger network computing what it
    did (grow.py), so that later rounds train capacity the recipe could not train from scratch here."""
    round: int = Field(ge=0)
    every: int | None = Field(None, ge=1)  # deeper: a new layer after every `every` layers
    hidden_size: int | None = Field(None, ge=16)  # wider: the residual stream (new heads of the same size)
    intermediate_size: int | None = Field(None, ge=16)  # wider: the MLP

    @model_validator(mode="after")
    def _grows_something(self) -> GrowConfig:
        if self.every is None and self.hidden_size is None:
            raise ValueError("selfplay.grow needs `every` (deeper) or `hidden_size` (wider), or both")
        return self


class SelfPlayConfig(Strict):
    """The OmniGen2 way: the model's own drawings and revisions, labelled by the verifier, mixed back in."""
    rounds: int = Field(1, ge=0)
    images: int = Field(768, ge=0)  # own drawings per round
    steps: NonNegativeInt | list[NonNegativeInt] = 400  # training steps: one for every round, or one per round
    own_share: float = Field(0.5, ge=0, le=1)  # share of batches made of own images (the rest: the synthetic mix)
    flawed: int = Field(0, ge=0)  # reflections on patch-level hybrids (flaws.py) added to each round's own rows
    lr: float = Field(5e-4, gt=0)
    # the own drawings' settings: one for every round, or a list of one per round
    guidance: float | list[float] = 1.5
    temperature: float | list[float] = 1.0
    # a wrong image whose fixing edit its own revise did not carry out is labelled `edit: regenerate`
    regenerate_unmade_edits: bool = False
    # its own revise tries each wrong image's fixing edit this many times; a try the verifier passes is kept
    # as a revise row (rejection sampling on revisions; 0: only the verifier's rendered corrections)
    revise_tries: NonNegativeInt | list[NonNegativeInt] = 0  # one for every round, or one per round
    # reflections of the rarer verdict repeated to match the other's count (one for all rounds, or per round)
    balance_verdicts: bool | list[bool] = False
    # the task mix of the round's synthetic batches (one for every round, or one per round; null: the LM's own)
    mix: dict[Task, float] | list[dict[Task, float] | None] | None = None
    # then the verdict gate's threshold, on this many own drawings of train prompts (0: no gate, 0.5)
    calibration_images: int = Field(512, ge=0)
    # P(right) as the share of this many reflections sampled at temperature 1 that say right (0: the greedy one's)
    verdict_votes: int = Field(0, ge=0, le=64)
    grow: GrowConfig | None = None

    @model_validator(mode="after")
    def _per_round_settings(self) -> SelfPlayConfig:
        for name in ("steps", "guidance", "temperature", "balance_verdicts", "mix", "revise_tries"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) != self.rounds:
                raise ValueError(f"selfplay.{name} lists {len(value)} values for {self.rounds} rounds: give one "
                                 "per round, or one value for all")
        for mix in self.mix if isinstance(self.mix, list) else [self.mix]:
            if mix is not None and (any(not math.isfinite(w) or w < 0 for w in mix.values()) or sum(mix.values()) <= 0):
                raise ValueError(f"selfplay.mix weights must be >= 0 with a positive sum, got {mix}")
        if self.grow is not None and self.grow.round >= self.rounds:
            raise ValueError(f"selfplay.grow.round is {self.grow.round}, but there are {self.rounds} rounds (0-based)")
        for name, least in (("guidance", "at least 0"), ("temperature", "more than 0")):
            value = getattr(self, name)
            for v in value if isinstance(value, list) else [value]:
                if not math.isfinite(v) or v < 0 or (v == 0 and name == "temperature"):
                    raise ValueError(f"selfplay.{name} must be {least}, got {v}")
        return self

    def per_round(self, name: str, r: int):
        """Round r's value of a setting given once for all rounds or as a list of one per round."""
        value = getattr(self, name)
        return value[r] if isinstance(value, list) else value

    def steps_before(self, r: int) -> int:
        """Self-play steps of the rounds before round r."""
        return sum(self.per_round("steps", k) for k in range(r))

    def drawing(self, r: int) -> tuple[float, float]:
        """Round r's (guidance, temperature) of its own drawings."""
        return self.per_round("guidance", r), self.per_round("temperature", r)


class DecodingConfig(Strict):
    """The drawing settings the model folder ships (sampling.json): the grid point whose drawings of train
    prompts the verifier finds right most often (the same prompts and seeds at every point)."""
    guidances: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = [1.5, 2.0, 2.5]
    temperatures: list[Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]] = [0.6, 0.7, 0.8, 1.0]
    images: int = Field(512, ge=0)  # per grid point (0: no choice, guidance 1.5 at temperature 1)


class OwnDecoderConfig(Strict):
    """After self-play: the VQ decoder continued on fixed codes, half rendered scenes and half the model's
    own drawings with clean targets (own_decoder.py); 0 steps: off."""
    steps: int = Field(0, ge=0)
    images: int = Field(4096, ge=1)  # own drawings of train prompts, drawn once with the last round's settings
    lr: float = Field(3e-4, gt=0)
    warmup: int = Field(300, ge=0)


class UnifiedConfig(YamlConfig):
    seed: int = 0
    vq: VQConfig = VQConfig()
    lm: LMConfig = LMConfig()
    selfplay: SelfPlayConfig = SelfPlayConfig()
    own_decoder: OwnDecoderConfig = OwnDecoderConfig()
    decoding: DecodingConfig = DecodingConfig()


class UnifiedBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["unified"] = "unified"
    path: str | None = None  # None: the shipped weights
    device: str = "cpu"
    # drawing settings; None: the model folder's choice (sampling.json), else guidance 1.5, temperature 1, all codes
    guidance: float | None = Field(None, ge=0, allow_inf_nan=False)  # classifier-free guidance of drawings
    temperature: float | None = Field(None, ge=0, le=10, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    # revisions and edits: a changed patch's code at this temperature (0, the default: the likeliest other code)
    change_temperature: float | None = Field(None, ge=0, le=10, allow_inf_nan=False)
    # the reflection says "right" only when P(right) reaches this; None: the folder's calibrated value
    right_threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    # P(right) as the share of this many sampled reflections that say right; None: the folder's (reflect.json)
    verdict_votes: int | None = Field(None, ge=0, le=64)
