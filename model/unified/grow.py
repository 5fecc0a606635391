"""Growing a trained LM without changing what it computes (net2net-style), so that self-play goes on
in a larger network than the one the recipe could afford to train from scratch on two CPU cores.

`deepen` puts a new layer after every `every` layers whose output projections are zero: a residual
block that adds nothing until it learns to. `widen` pads the residual stream, the heads and the MLP
with new units whose writes into the old units are zero, and rescales the RMS norms for the padding.
"""

from __future__ import annotations

import copy
import math

import torch
from transformers import LlamaForCausalLM

from model.unified.config import GrowConfig

WRITES = ("o_proj", "down_proj")  # the projections that write into the residual stream
READS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def deepen(lm: LlamaForCausalLM, every: int = 1, seed: int = 0) -> LlamaForCausalLM:
    """A copy of `lm` with a new (identity) layer after every `every` of its layers."""
    cfg = copy.deepcopy(lm.config)
    order: list[int | None] = []  # per new layer: the old layer it copies, or None for a new one
    for i in range(cfg.num_hidden_layers):
        order += [i] + ([None] if (i + 1) % every == 0 else [])
    cfg.num_hidden_layers = len(order)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[0]] * len(order)
    old, new = lm.state_dict(), _fresh(cfg, seed)
    state = new.state_dict()
    for k, v in old.items():
        if ".layers." not in k:
            state[k].copy_(v)
    for j, i in enumerate(order):
        if i is None:
            for name in WRITES:
                next(v for k, v in state.items() if k.startswith(f"model.layers.{j}.") and name in k).zero_()
            continue
        for k, v in old.items():
            if k.startswith(f"model.layers.{i}."):
                state[k.replace(f"model.layers.{i}.", f"model.layers.{j}.")].copy_(v)
    return _finish(new, lm)


def widen(lm: LlamaForCausalLM, hidden_size: int, intermediate_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A copy of `lm` with a residual stream of `hidden_size` (heads of the same size added) and an MLP
    of `intermediate_size`. New units read the old ones (random weights) but write nothing into them."""
    cfg = copy.deepcopy(lm.config)
    h0 = cfg.hidden_size
    if hidden_size < h0 or intermediate_size < cfg.intermediate_size or hidden_size % cfg.head_dim:
        raise ValueError(f"widen: hidden {hidden_size} must be >= {h0} and a multiple of the head size "
                         f"{cfg.head_dim}; the MLP {intermediate_size} >= {cfg.intermediate_size}")
    if cfg.num_key_value_heads != cfg.num_attention_heads:
        raise ValueError("widen: grouped-query attention is not supported")
    cfg.hidden_size, cfg.intermediate_size = hidden_size, intermediate_size
    cfg.num_attention_heads = cfg.num_key_value_heads = hidden_size // cfg.head_dim
    cfg.rms_norm_eps = cfg.rms_norm_eps * h0 / hidden_size  # the same eps, relative to the old units' mean square
    old, new = lm.state_dict(), _fresh(cfg, seed)
    scale = math.sqrt(h0 / hidden_size)  # zero padding shrinks the RMS by this much: the norms make up for it
    for k, v in new.state_dict().items():
        was = old[k]
        if k.endswith("norm.weight"):
            v.fill_(scale)
            v[:h0] = was * scale
        elif k.endswith(("embed_tokens.weight", "lm_head.weight")):
            v.zero_()
            v[:, :h0] = was
        elif any(f"{name}." in k for name in READS):
            v[:was.shape[0], :h0] = was  # the rest keeps its random init: reading zeros, it changes nothing
        elif any(f"{name}." in k for name in WRITES):
            v.zero_()
            v[:h0, :was.shape[1]] = was
        else:
            raise ValueError(f"widen: no rule for {k} {tuple(v.shape)}")
    return _finish(new, lm)


def grow(lm: LlamaForCausalLM, cfg: GrowConfig, seed: int = 0) -> LlamaForCausalLM:
    """`lm` grown as the recipe's `selfplay.grow` says: wider first, then deeper (new layers at the new width)."""
    if cfg.hidden_size is not None:
        lm = widen(lm, cfg.hidden_size, cfg.intermediate_size or lm.config.intermediate_size, seed)
    if cfg.every is not None:
        lm = deepen(lm, cfg.every, seed)
    return lm


def _fresh(cfg, seed: int) -> LlamaForCausalLM:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def _finish(new: LlamaForCausalLM, old: LlamaForCausalLM) -> LlamaForCausalLM:
    new.tie_weights()
    new.generation_config = copy.deepcopy(old.generation_config)
    return new.to(next(old.parameters()).device).train(old.training)
