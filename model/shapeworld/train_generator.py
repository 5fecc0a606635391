"""Training recipe of the embedded generator: autoencoder, then denoiser + text encoder, then
the decoder sharpened on the frozen latent space.

Seeded and reproducible (batch k is a function of (seed, k)), resumable (atomic
checkpoints every `checkpoint_every` steps; a killed run resumes at its last one), CPU by
default and CUDA when present. The exported pipeline folder records how it was made.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from model.shapeworld.build import build_pipeline, build_vae
from model.shapeworld.config import GeneratorConfig
from model.shapeworld.data import batch_rng, generator_batch, scene_batch
from model.shapeworld.pipeline import ShapeWorldPipeline, images_to_tensor

VAE_STAGE, DENOISER_STAGE, DECODER_STAGE = 1, 2, 3


def pick_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn())


def log_progress(log: Callable[[str], None], bar: Progress, stage: str, step: int, total: int, loss: float) -> None:
    """A plain line at each checkpoint when nobody watches the bar (a background run's log)."""
    if not bar.console.is_terminal:
        log(f"{stage}: step {step}/{total}, loss {loss:.4f}, checkpoint saved")


def run_stage(name: str, ckpt: Path, total: int, every: int, device: torch.device, step: Callable[[int], float],
              state: Callable[[], dict], load: Callable[[dict], None], log: Callable[[str], None]) -> None:
    """The loop all stages share: resume from `ckpt` if it exists, run the remaining steps under
    a progress bar, save atomically every `every` steps and at the end."""
    start, elapsed = 0, 0.0
    if ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        load(saved)
        start, elapsed = saved["step"], saved["elapsed"]
        log(f"resuming the {name} at step {start}")
    t0 = time.perf_counter() - elapsed
    with progress_bar() as bar:
        task = bar.add_task(name, total=total, completed=start, loss=float("nan"))
        for k in range(start, total):
            loss = step(k)
            bar.update(task, advance=1, loss=loss)
            if (k + 1) % every == 0 or k + 1 == total:
                save_atomic({**state(), "step": k + 1, "elapsed": time.perf_counter() - t0}, ckpt)
                log_progress(log, bar, name, k + 1, total, loss)


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + L2: L1 keeps flat colours crisp, L2 punishes the odd wild pixel."""
    return (rec - x).abs().mean() + F.mse_loss(rec, x)


def descend(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def train_vae(cfg: GeneratorConfig, work: Path, device: torch.device, log: Callable[[str], None]) -> AutoencoderKL:
    """Autoencoder on random scenes: L1 + L2 reconstruction, a whisper of KL."""
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr)
    gen = torch.Generator(device).manual_seed(cfg.seed)  # posterior samples; its state is checkpointed

    def step(k: int) -> float:
        x = images_to_tensor(scene_batch(batch_rng(cfg.seed, VAE_STAGE, k), cfg.vae.batch_size), device,
                             torch.float32)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        return descend(opt, reconstruction_loss(rec, x) + cfg.vae.kl_weight * post.kl().mean())

    def load(saved: dict) -> None:
        vae.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if "generator" in saved:  # absent from checkpoints of older runs
            gen.set_state(saved["generator"])

    run_stage("autoencoder", work / "vae.pt", cfg.vae.steps, cfg.checkpoint_every, device, step,
              lambda: {"model": vae.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state()},
              load, log)
    vae.eval().requires_grad_(False)
    _normalise_latents(vae, cfg, device)
    return vae


@torch.no_grad()
def _normalise_latents(vae: AutoencoderKL, cfg: GeneratorConfig, device: torch.device) -> None:
    """Set shift/scale so that the denoiser sees latents of mean 0, std 1."""
    x = images_to_tensor(scene_batch(batch_rng(cfg.seed, 0, 0), 512), device, torch.float32)
    z = vae.encode(x).latent_dist.mode()
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1 / z.std()))


def train_denoiser(cfg: GeneratorConfig, vae: AutoencoderKL, work: Path, device: torch.device,
                   log: Callable[[str], None]) -> ShapeWorldPipeline:
    """Flow matching: x_s = (1 - s) x0 + s noise, predict noise - x0; text and source dropped
    at random so that both can be guided."""
    d = cfg.denoiser
    torch.manual_seed(cfg.seed)
    pipe = build_pipeline(cfg, vae=vae).to(device)
    trained = [pipe.transformer, pipe.text_encoder]
    params = [p for m in trained for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=d.lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=d.warmup, num_training_steps=max(d.steps, 1))
    ema = EMAModel(params, decay=d.ema_decay)
    for m in trained:
        m.train()

    def step(k: int) -> float:
        rng = batch_rng(cfg.seed, DENOISER_STAGE, k)
        batch = generator_batch(rng, d.batch_size, d.edit_share)
        gen = torch.Generator(device).manual_seed(int(rng.integers(2**62)))
        with torch.no_grad():
            x0 = pipe.encode_images(batch.targets)
            has_source = torch.as_tensor(batch.has_source, device=device).view(-1, 1, 1, 1)
            source = pipe.encode_images(batch.sources) * has_source
        drop_text = rng.random(len(batch.texts)) < d.drop_text
        texts = ["" if drop else t for t, drop in zip(batch.texts, drop_text)]
        keep_source = torch.as_tensor(rng.random(len(texts)) >= d.drop_source, device=device)
        source = source * keep_source.view(-1, 1, 1, 1)
        if d.sigma_sampling == "uniform":
            u = torch.rand(len(texts), generator=gen, device=device)
        else:
            u = torch.randn(len(texts), generator=gen, device=device).sigmoid()
        sigma = d.shift * u / (1 + (d.shift - 1) * u)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        hidden, mask = pipe.encode_text(texts)
        loss = F.mse_loss(pipe.velocity(noisy, source, hidden, mask, sigma), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        return loss.item()

    def load(saved: dict) -> None:
        pipe.transformer.load_state_dict(saved["transformer"])
        pipe.text_encoder.load_state_dict(saved["text_encoder"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["lr_scheduler"])
        ema.load_state_dict(saved["ema"])

    run_stage("denoiser", work / "denoiser.pt", d.steps, cfg.checkpoint_every, device, step,
              lambda: {"transformer": pipe.transformer.state_dict(), "text_encoder": pipe.text_encoder.state_dict(),
                       "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(), "ema": ema.state_dict()},
              load, log)
    ema.copy_to(params)
    for m in trained:
        m.eval().requires_grad_(False)
    return pipe


def train_decoder(cfg: GeneratorConfig, pipe: ShapeWorldPipeline, work: Path, device: torch.device,
                  log: Callable[[str], None]) -> None:
    """Fine-tune the decoder on the latents the denoiser learned to produce (the encoder's
    posterior mode, frozen): sharper colours and edges without moving the latent space."""
    if cfg.vae.decoder_steps == 0:
        return
    vae = pipe.vae
    decoder = [vae.decoder, vae.post_quant_conv]
    opt = torch.optim.AdamW([p for m in decoder for p in m.parameters()], lr=cfg.vae.decoder_lr)
    for m in decoder:
        m.train().requires_grad_(True)

    def step(k: int) -> float:
        x = images_to_tensor(scene_batch(batch_rng(cfg.seed, DECODER_STAGE, k), cfg.vae.batch_size), device,
                             torch.float32)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        return descend(opt, reconstruction_loss(vae.decode(z).sample, x))

    def load(saved: dict) -> None:
        vae.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])

    run_stage("decoder", work / "decoder.pt", cfg.vae.decoder_steps, cfg.checkpoint_every, device, step,
              lambda: {"model": vae.state_dict(), "optimizer": opt.state_dict()}, load, log)
    for m in decoder:
        m.eval().requires_grad_(False)


def export_pipeline(pipe: ShapeWorldPipeline, out: Path, record: dict) -> Path:
    """save_pretrained into a temp folder, then swap it in: a crash never leaves half a model."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def export_checkpoint(cfg: GeneratorConfig, work: Path, export: Path) -> Path:
    """Export the latest checkpoints as they are (the denoiser's EMA weights), e.g. to evaluate
    a run in progress. The record says how far each stage got."""
    vae_state = torch.load(work / "vae.pt", map_location="cpu", weights_only=False)
    den_state = torch.load(work / "denoiser.pt", map_location="cpu", weights_only=False)
    vae = build_vae(cfg)
    vae.load_state_dict(vae_state["model"])
    vae.eval().requires_grad_(False)
    _normalise_latents(vae, cfg, torch.device("cpu"))
    pipe = build_pipeline(cfg, vae=vae)
    pipe.transformer.load_state_dict(den_state["transformer"])
    pipe.text_encoder.load_state_dict(den_state["text_encoder"])
    params = [p for m in (pipe.transformer, pipe.text_encoder) for p in m.parameters()]
    ema = EMAModel(params, decay=cfg.denoiser.ema_decay)
    ema.load_state_dict(den_state["ema"])
    ema.copy_to(params)
    if (work / "decoder.pt").exists():
        vae.load_state_dict(torch.load(work / "decoder.pt", map_location="cpu", weights_only=False)["model"])
    record = {"partial": True, "config": cfg.model_dump(), "git_commit": git_commit(),
              "steps_done": {"autoencoder": vae_state["step"], "denoiser": den_state["step"]}}
    return export_pipeline(pipe, export, record)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def train_generator(cfg: GeneratorConfig, work: Path, export: Path, device: str | None = None,
                    log: Callable[[str], None] = print) -> Path:
    dev = pick_device(device)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(cfg.model_dump_json(indent=2))
    t0 = time.perf_counter()
    vae = train_vae(cfg, work, dev, log)
    t_vae = time.perf_counter() - t0
    pipe = train_denoiser(cfg, vae, work, dev, log)
    train_decoder(cfg, pipe, work, dev, log)
    stages = {name: torch.load(work / f"{name}.pt", map_location="cpu", weights_only=False)
              for name in ("vae", "denoiser", "decoder") if (work / f"{name}.pt").exists()}
    record = {
        "command": " ".join(["refloop", *sys.argv[1:]]) if Path(sys.argv[0]).name == "refloop" else " ".join(sys.argv),
        "config": cfg.model_dump(),
        "steps": {"autoencoder": cfg.vae.steps, "denoiser": cfg.denoiser.steps, "decoder": cfg.vae.decoder_steps},
        "examples_seen": {"autoencoder": cfg.vae.steps * cfg.vae.batch_size,
                          "denoiser": cfg.denoiser.steps * cfg.denoiser.batch_size,
                          "decoder": cfg.vae.decoder_steps * cfg.vae.batch_size},
        "wall_seconds": {name: round(s["elapsed"], 1) for name, s in stages.items()},
        "this_session_seconds": {"autoencoder": round(t_vae, 1), "total": round(time.perf_counter() - t0, 1)},
        "device": str(dev) + ("" if dev.type == "cpu" else f" ({torch.cuda.get_device_name(dev)})"),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "seed": cfg.seed,
    }
    return export_pipeline(pipe.to("cpu"), export, record)
