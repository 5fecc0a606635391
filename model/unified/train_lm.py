"""Training of the unified LM: a stream of task batches from world/ (batch k is a function of
(seed, k), so a resumed run equals an uninterrupted one; under torchrun each process renders and
trains on its share of it), AdamW with warmup + cosine decay, atomic checkpoints, progress with
loss and ETA."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.ranks import Ranks
from model.recipe import Progress
from model.unified.config import LMConfig
from model.unified.sequences import Layout
from model.unified.tasks import TASKS, Example, make_examples
from model.unified.vq import encode
from world import render


def build_lm(cfg: LMConfig, vocab_size: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
                         intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_positions,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def kept_patches(source: np.ndarray, target: np.ndarray, margin: int, patch: int = 8) -> np.ndarray:
    """(64,) bool: patches whose pixels, `margin` around included, are the same in both images."""
    n = source.shape[0] // patch
    diff = (source != target).any(-1)
    out = np.zeros(n * n, bool)
    for k in range(n * n):
        r, c = divmod(k, n)
        out[k] = not diff[max(0, r * patch - margin):r * patch + patch + margin,
                          max(0, c * patch - margin):c * patch + patch + margin].any()
    return out


def encode_examples(vq, layout: Layout, examples: list[Example], prompt_dropout: float,
                    rng: np.random.Generator, copy_margin: int | None = None) -> dict[str, torch.Tensor]:
    """Render and VQ-encode every scene of a batch at once, then lay the examples out as tokens."""
    scenes = [s for ex in examples for s in (ex.source, ex.target) if s is not None]
    images = render(scenes) if scenes else None
    codes = encode(vq, images).tolist() if scenes else []
    rows, k = [], 0
    for ex in examples:
        source = target = None
        if ex.source is not None:
            source, k = codes[k], k + 1
        if ex.target is not None:
            target, k = codes[k], k + 1
        if source is not None and target is not None and copy_margin is not None:
            kept = kept_patches(images[k - 2], images[k - 1], copy_margin)
            target = [s if keep else t for s, t, keep in zip(source, target, kept)]
        text = None if ex.task == "draw" and rng.random() < prompt_dropout else ex.text
        rows.append(layout.example(ex.task, text, source, target, ex.critique))
    return layout.collate(rows)


def task_of_batch(seed: int, step: int, mix: dict[str, float]) -> str:
    weights = np.array([mix.get(t, 0.0) for t in TASKS])
    return TASKS[int(np.random.default_rng([seed, 2, step]).choice(len(TASKS), p=weights / weights.sum()))]


def synthetic_batch(seed: int, step: int, cfg: LMConfig, vq, layout: Layout,
                    ranks: Ranks = Ranks()) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng([seed, 3, step])
    late = cfg.late_mix is not None and step >= cfg.late_mix_from
    task = task_of_batch(seed, step, cfg.late_mix if late else cfg.mix)
    margin = cfg.copy_margin if step >= cfg.copy_from_step else None
    examples = ranks.share(make_examples(task, rng, cfg.batch_size))
    return encode_examples(vq, layout, examples, cfg.prompt_dropout, rng, margin)


def train_lm(model, batches: Callable[[int], dict], *, steps: int, lr: float, warmup: int, weight_decay: float,
             state: Path, name: str, device: torch.device, log=print, save_every: int = 250,
             ranks: Ranks = Ranks()) -> dict:
    """Train `model` on batches(k) for k < steps (this process's share of batch k); state holds
    everything needed to resume (rank 0 writes it)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    decay = lambda s: min(1.0, (s + 1) / max(warmup, 1)) * 0.5 * (1 + np.cos(np.pi * min(s / max(steps, 1), 1)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    step, spent, losses = 0, 0.0, []
    if state.is_file():
        ck = torch.load(state, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        step, spent, losses = ck["step"], ck["seconds"], ck.get("recent_losses", [])
    model.to(device).train()
    net = ranks.wrap(model)
    progress, t0 = Progress(name, steps, step, log), time.time()
    while step < steps:
        batch = {k: v.to(device) for k, v in batches(step).items()}
        loss = net(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step()
        step += 1
        losses.append(loss.item())
        progress(step, loss=float(np.mean(losses[-50:])), lr=sched.get_last_lr()[0])
        if ranks.main and (step % save_every == 0 or step == steps):
            tmp = state.with_name(f".{state.name}.tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step, "seconds": spent + time.time() - t0, "recent_losses": losses[-100:]}, tmp)
            tmp.replace(state)
    model.eval()
    return {"steps": steps, "seconds": round(spent + time.time() - t0), "processes": ranks.world,
            "final_loss": float(np.mean(losses[-100:])) if losses else None}
