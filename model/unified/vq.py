"""The image tokenizer: a diffusers VQModel, 64x64x3 <-> 8x8 codes, trained on rendered scenes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from diffusers import VQModel

from model.recipe import Progress
from model.unified.config import VQConfig


def build_vq(cfg: VQConfig) -> VQModel:
    n = len(cfg.block_out_channels)
    vq = VQModel(block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
                   down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                   latent_channels=cfg.latent_channels, num_vq_embeddings=cfg.num_codes,
                   vq_embed_dim=cfg.vq_embed_dim, norm_num_groups=cfg.norm_num_groups, sample_size=64,
                   mid_block_add_attention=cfg.mid_attention, lookup_from_codebook=True)
    vq.register_to_config(_local_codes=cfg.local_codes)  # saved in vq/config.json, read back by latents()
    return vq


def latents(vq: VQModel, x: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """Pre-quantisation latents (B, D, 8, 8). With local codes each 8x8 patch is encoded on its own, so
    a code is a function of its patch's pixels only: a white patch is always the same code and a patch an
    edit leaves alone keeps its code (copying is then exact). The decoder still sees the whole grid."""
    if not vq.config.get("_local_codes", False):
        return vq.encode(x).latents
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    tiles = x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c, patch, patch)
    z = vq.encode(tiles).latents  # (B*64, D, 1, 1)
    return z.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_images(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.inference_mode()
def encode(vq: VQModel, images: np.ndarray) -> torch.Tensor:
    """uint8 images (B, 64, 64, 3) -> code indices (B, 64), row-major over the 8x8 grid."""
    device = next(vq.parameters()).device
    h = latents(vq, to_tensor(images).to(device))
    _, _, (_, _, idx) = vq.quantize(h)
    return idx.view(h.shape[0], -1)


@torch.inference_mode()
def decode(vq: VQModel, codes: torch.Tensor) -> np.ndarray:
    """Code indices (B, 64) -> uint8 images (B, 64, 64, 3)."""
    b, n = codes.shape
    side = int(round(n ** 0.5))
    shape = (b, side, side, vq.config.vq_embed_dim)
    return to_images(vq.decode(codes.reshape(-1), force_not_quantize=True, shape=shape).sample)


def scene_batch(seed: int, step: int, size: int) -> np.ndarray:
    """Batch `step` of rendered scenes: a function of (seed, step), so a resumed run sees the same data.
    Half random scenes of 1-6 objects, half scenes drawn for training prompts of every family."""
    from model.unified.tasks import training_scenes

    rng = np.random.default_rng([seed, 1, step])
    return training_scenes(rng, size)


def vq_loss(vq: VQModel, x: torch.Tensor, ink_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    h = latents(vq, x)
    quant, commit, (_, _, idx) = vq.quantize(h)
    out = vq.decoder(vq.post_quant_conv(quant))
    ink = 1 + (ink_weight - 1) * (x < 0.98).any(dim=1, keepdim=True).float()
    err = ink * ((out - x) ** 2 + (out - x).abs())
    return err.mean() + commit, idx


def train_vq(cfg: VQConfig, seed: int, work: Path, device: torch.device, log=print) -> tuple[VQModel, dict]:
    """Seeded and resumable: the state in work/vq.pt is the whole run so far."""
    torch.manual_seed(seed)
    vq = build_vq(cfg).to(device)
    opt = torch.optim.AdamW(vq.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s / max(cfg.steps, 1), 1))))
    last_used = torch.zeros(cfg.num_codes, dtype=torch.long)
    state, step, spent = work / "vq.pt", 0, 0.0
    if state.is_file():
        ck = torch.load(state, map_location=device, weights_only=False)
        vq.load_state_dict(ck["model"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        step, spent, last_used = ck["step"], ck["seconds"], ck["last_used"]
        torch.set_rng_state(ck["torch_rng"])
    progress, t0 = Progress("vq", cfg.steps, step, log), time.time()
    vq.train()
    while step < cfg.steps:
        x = to_tensor(scene_batch(seed, step, cfg.batch_size)).to(device)
        loss, idx = vq_loss(vq, x, cfg.ink_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(), sched.step()
        step += 1
        last_used[idx.unique().cpu()] = step
        if step % cfg.reseed_every == 0:
            reseed_dead_codes(vq, x, last_used, step, cfg.reseed_every)
        progress(step, loss=loss.item(), codes_used=float((last_used > step - cfg.reseed_every).sum()))
        if step % 200 == 0 or step == cfg.steps:
            tmp = work / ".vq.pt.tmp"
            torch.save({"model": vq.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                        "seconds": spent + time.time() - t0, "last_used": last_used,
                        "torch_rng": torch.get_rng_state()}, tmp)
            tmp.replace(state)
    vq.eval()
    return vq, {"steps": cfg.steps, "examples": cfg.steps * cfg.batch_size, "seconds": round(spent + time.time() - t0)}


@torch.no_grad()
def reseed_dead_codes(vq: VQModel, x: torch.Tensor, last_used: torch.Tensor, step: int, window: int) -> None:
    """Codes no image used in the last `window` steps restart at random encoder outputs."""
    dead = (last_used <= step - window).nonzero().flatten()
    if len(dead) == 0:
        return
    h = latents(vq, x).permute(0, 2, 3, 1).reshape(-1, vq.config.vq_embed_dim)
    pick = torch.randint(len(h), (len(dead),))
    vq.quantize.embedding.weight.data[dead.to(h.device)] = h[pick] + 0.01 * torch.randn_like(h[pick])
    last_used[dead] = step


def sharpen_decoder(cfg: VQConfig, seed: int, vq: VQModel, work: Path, device: torch.device, log=print) -> dict:
    """Train the decoder on the codes of rendered scenes; resumable from work/vq-decoder.pt."""

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = scene_batch(seed + 1, step, cfg.batch_size)
        return encode(vq, x), to_tensor(x)

    return train_decoder(vq, batch, cfg.decoder_steps, cfg.decoder_lr, cfg.ink_weight, work / "vq-decoder.pt",
                         "vq decoder", device, log)


def train_decoder(vq: VQModel, batch, steps: int, lr: float, ink_weight: float, state: Path, name: str,
                  device: torch.device, log=print, warmup: int = 0) -> dict:
    """The decoder (and post-quant conv) alone on fixed codes: the encoder and codebook do not move, so
    the codes an LM was trained on mean what they meant. `batch(step)` -> (codes (B, 64), target images
    in [-1, 1]), a function of the step, so a resumed run sees the same data; cosine lr after `warmup`."""
    params = [*vq.decoder.parameters(), *vq.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (warmup + 1))
                                              * 0.5 * (1 + np.cos(np.pi * min(s / max(steps, 1), 1))))
    step, spent = 0, 0.0
    if state.is_file():
        ck = torch.load(state, map_location=device, weights_only=False)
        vq.load_state_dict(ck["model"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        step, spent = ck["step"], ck["seconds"]
    progress, t0 = Progress(name, steps, step, log), time.time()
    vq.train()
    while step < steps:
        codes, x = batch(step)
        codes, x = codes.to(device).clone(), x.to(device)  # clone: encode()'s codes are inference tensors
        quant = vq.quantize.embedding(codes).reshape(codes.shape[0], 8, 8, -1).permute(0, 3, 1, 2)
        out = vq.decoder(vq.post_quant_conv(quant))
        ink = 1 + (ink_weight - 1) * (x < 0.98).any(dim=1, keepdim=True).float()
        loss = (ink * ((out - x) ** 2 + (out - x).abs())).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(), sched.step()
        step += 1
        progress(step, loss=loss.item())
        if step % 200 == 0 or step == steps:
            tmp = state.with_name(f".{state.name}.tmp")
            torch.save({"model": vq.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                        "seconds": spent + time.time() - t0}, tmp)
            tmp.replace(state)
    vq.eval()
    return {"steps": steps, "seconds": round(spent + time.time() - t0)}
