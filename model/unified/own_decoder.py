"""The last stage of the recipe: the VQ decoder continued on the model's own drawings as well as on
rendered scenes.

On rendered scenes alone a longer-trained decoder rounds complex scenes trip better but decodes the
self-played LM's own drawings worse (README): the LM had learnt codes the old decoder renders right.
Here half of each batch is the LM's own drawings, whose target is a clean render of what the current
decoder shows them as (read by the parser, drawn again by the renderer; the decoded image itself where
a region fits no shape): what a drawing reads as stays, its shapes get crisper. The other half is
rendered scenes, half of them complex prompts' scenes (where the round trip fails). Labelling only: the
renderer and parser make targets, never part of decoding."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch

from model.unified.bundle import UnifiedModel
from model.unified.config import OwnDecoderConfig
from model.unified.tasks import train_prompt, training_scenes
from model.unified.vq import decode, encode, to_tensor, train_decoder
from world import parse_image, render, scene_for_prompt
from world.parse import ParsedObject
from world.scene import Obj, Scene
from world.spec import MAX_SIZE, MIN_SIZE, SHAPES
from world.suites import sample_prompt


@cache
def _extents() -> dict[str, list[tuple[int, int, int, int, int]]]:
    """Per shape: (size, x0, y0, x1, y1), the box the parser reads off an object of that size drawn at
    (0, 0) (a triangle's apex is thinner than the parser's opening, so its box starts lower)."""
    out = {shape: [] for shape in SHAPES}
    for shape in SHAPES:
        for size in range(MIN_SIZE, MAX_SIZE + 1):
            x0, y0, x1, y1 = parse_image(render([Scene(objects=(Obj(shape=shape, color="red", x=20, y=20,
                                                                      size=size),))])[0]).objects[0].box
            out[shape].append((size, x0 - 20, y0 - 20, x1 - 20, y1 - 20))
    return out


def as_obj(o: ParsedObject) -> Obj:
    """The object whose rendered pixels span the parsed box most nearly (a triangle's box is larger
    than its pixels)."""
    x0, y0, x1, y1 = o.box
    size, dx, dy, _, _ = min(_extents()[o.shape],
                             key=lambda e: abs(e[3] - e[1] - (x1 - x0)) + abs(e[4] - e[2] - (y1 - y0)))
    return Obj(shape=o.shape, color=o.color, x=x0 - dx, y=y0 - dy, size=size)


def clean_target(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """(target, cleaned): the parsed scene rendered again, or the image itself where the parse finds a
    region that fits no shape (or objects no scene can hold)."""
    parsed = parse_image(image)
    if parsed.blobs or not parsed.objects:
        return image, False
    try:
        scene = Scene(objects=tuple(as_obj(o) for o in parsed.objects))
    except ValueError:
        return image, False
    return render([scene])[0], True


def own_drawings(model: UnifiedModel, n: int, seed: int, batch: int = 64, log=print) -> dict:
    """n drawings of train prompts with the model's drawing settings: their codes and clean targets."""
    rng = np.random.default_rng([seed, 4])
    prompts = [train_prompt(rng) for _ in range(n)]
    codes, targets, cleaned = [], [], 0
    for i in range(0, n, batch):
        chunk = prompts[i:i + batch]
        part = model.draw_codes(chunk, [seed * 1_000_003 + k for k in range(i, i + len(chunk))])
        for image in decode(model.vq, part):
            target, ok = clean_target(image)
            targets.append(target)
            cleaned += ok
        codes.append(part)
        log(f"own drawings for the decoder: {i + len(part)}/{n}, {cleaned} cleaned")
    return {"codes": torch.cat(codes).cpu(), "targets": np.stack(targets), "cleaned": cleaned}


def decoder_on_own(cfg: OwnDecoderConfig, seed: int, batch_size: int, ink_weight: float, model: UnifiedModel,
                   work: Path, device: torch.device, log=print) -> dict:
    """Resumable: the drawings in work/own-decoder-data.pt, the decoder's state in work/own-decoder.pt."""
    data_path = work / "own-decoder-data.pt"
    work.mkdir(parents=True, exist_ok=True)
    if not data_path.is_file():
        tmp = data_path.with_name(f".{data_path.name}.tmp")
        torch.save(own_drawings(model, cfg.images, seed, log=log), tmp)
        tmp.replace(data_path)
    data = torch.load(data_path, weights_only=False)
    vq, n_own = model.vq, batch_size // 2
    n_complex = (batch_size - n_own) // 2

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([seed, 5, step])
        scenes = list(training_scenes(rng, batch_size - n_own - n_complex))
        scenes += list(render([scene_for_prompt(sample_prompt(rng, "complex", "train").text, rng)
                               for _ in range(n_complex)]))
        pick = rng.integers(len(data["codes"]), size=n_own)
        codes = torch.cat([encode(vq, np.stack(scenes)).cpu(), data["codes"][torch.from_numpy(pick)]])
        return codes, to_tensor(np.concatenate([np.stack(scenes), data["targets"][pick]]))

    record = train_decoder(vq, batch, cfg.steps, cfg.lr, ink_weight, work / "own-decoder.pt", "decoder on own drawings",
                           device, log, warmup=cfg.warmup)
    return {**record, "images": cfg.images, "cleaned": data["cleaned"]}
