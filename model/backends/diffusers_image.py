"""Any local diffusers checkpoint behind the Generator and Editor roles.

Text-to-image loads through `AutoPipelineForText2Image` (the folder's model_index.json names the
family). Editing loads the pipeline class the edit folder names, or one named in the config, and
calls it with the arguments its family needs: InstructPix2Pix wants an image guidance, FLUX.1
Kontext must be told the area or it snaps every image to ~1 megapixel, Qwen-Image guides with
`true_cfg_scale`, OmniGen reads its images through placeholders in the prompt. Any other edit
pipeline gets `image=` and `prompt=`.

Seeds become one CPU `torch.Generator` per row, so a row's noise depends on its seed only (not on
its batch, nor on the device). Images come back as uint8 (H, W, 3), resized to `output_size`
(64x64 by default: the ShapeWorld verifier reads 64x64 images).
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DiffusersImageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["diffusers"] = "diffusers"
    path: str  # text-to-image folder, loaded with AutoPipelineForText2Image
    edit_path: str | None = None  # edit folder; None: the text-to-image pipeline's modules edit (e.g. FLUX.1 Kontext)
    edit_pipeline: str | None = None  # diffusers class of the edit pipeline; None: the class model_index.json names
    edit_shares: list[str] = []  # modules the edit pipeline takes from the text-to-image one (same weights, one copy)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    steps: int = Field(28, ge=1)
    guidance: float = 3.5  # text guidance (true_cfg_scale for Qwen-Image)
    image_guidance: float = 1.5  # how closely an edit keeps its source (InstructPix2Pix, OmniGen)
    height: int | None = Field(None, ge=8)  # working resolution; None: the pipeline's default, edits keep the source's
    width: int | None = Field(None, ge=8)
    output_size: tuple[int, int] | None = (64, 64)  # (height, width) of returned images; None: as the pipeline made
    generate_args: dict[str, Any] = {}  # more keyword arguments for the text-to-image call (they win)
    edit_args: dict[str, Any] = {}  # more keyword arguments for the edit call (they win)

    @model_validator(mode="after")
    def _both_sides(self) -> DiffusersImageConfig:
        if (self.height is None) != (self.width is None):
            raise ValueError("give both height and width, or neither")
        return self


def model_folder(path: str | Path, role: str) -> Path:
    """The folder of a pipeline, or FileNotFoundError naming it (nothing is ever downloaded)."""
    folder = Path(path).expanduser()
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no diffusers {role} pipeline at {folder}: model_index.json is missing")
    return folder


def pipeline_class(name: str | None):
    """The diffusers class named in the config (None: DiffusionPipeline, which reads the folder's class)."""
    import diffusers

    cls = getattr(diffusers, name or "DiffusionPipeline", None)
    if cls is None or not hasattr(cls, "from_pretrained") or not hasattr(cls, "from_pipe"):
        raise ValueError(f"edit_pipeline {name!r} is not a diffusers pipeline class (e.g. FluxKontextPipeline, "
                         "StableDiffusionInstructPix2PixPipeline, QwenImageEditPipeline)")
    return cls


def load_edit_pipeline(cfg: DiffusersImageConfig, t2i):
    """The edit pipeline: from its own folder (taking `edit_shares` from `t2i`), or, with one folder,
    built on the text-to-image pipeline's modules (no second copy of the weights in memory)."""
    edit_cls = pipeline_class(cfg.edit_pipeline)
    if cfg.edit_path is None:
        return t2i if cfg.edit_pipeline in (None, type(t2i).__name__) else edit_cls.from_pipe(t2i)
    shared = {name: module for name, module in t2i.components.items() if name in cfg.edit_shares}
    edit = edit_cls.from_pretrained(model_folder(cfg.edit_path, "edit"), dtype=DTYPES[cfg.dtype],
                                    local_files_only=True, **shared)
    if unshared := [n for n in cfg.edit_shares if n not in shared or edit.components.get(n) is not shared[n]]:
        raise ValueError(f"edit_shares {unshared}: not modules of both pipelines (text-to-image has "
                         f"{', '.join(t2i.components)}; edit has {', '.join(edit.components)})")
    return edit


def load_pipelines(cfg: DiffusersImageConfig):
    """(text-to-image, edit) pipelines on the configured device, progress bars off (the run shows its own)."""
    from diffusers import AutoPipelineForText2Image

    pipeline_class(cfg.edit_pipeline)  # a bad name fails before minutes of loading
    t2i = AutoPipelineForText2Image.from_pretrained(model_folder(cfg.path, "text-to-image"), dtype=DTYPES[cfg.dtype],
                                                    local_files_only=True)
    edit = load_edit_pipeline(cfg, t2i)
    if not (accepts(edit, "image") or accepts(edit, "input_images")):
        raise ValueError(f"{type(edit).__name__} takes no image, so it cannot edit: give edit_path (an edit "
                         "pipeline's folder) or edit_pipeline (e.g. AutoPipelineForImage2Image)")
    for pipe in (t2i, edit):
        pipe.to(cfg.device)
        pipe.set_progress_bar_config(disable=True)
    return t2i, edit


def accepts(pipe, name: str) -> bool:
    """Whether the pipeline's __call__ names this argument (a catch-all **kwargs does not count)."""
    return name in inspect.signature(pipe.__call__).parameters


def family_args(pipe, cfg: DiffusersImageConfig, n: int, size: tuple[int, int] | None) -> dict[str, Any]:
    """Guidance and size arguments as the pipeline's family takes them; `size` is (height, width)."""
    name = type(pipe).__name__
    args: dict[str, Any] = {}
    if size is not None and accepts(pipe, "height") and accepts(pipe, "width"):
        args.update(height=size[0], width=size[1])
    if name.startswith("QwenImage"):  # real classifier-free guidance needs a negative prompt
        args.update(true_cfg_scale=cfg.guidance, negative_prompt=[" "] * n)
    else:
        args["guidance_scale"] = cfg.guidance
    if "InstructPix2Pix" in name:
        args["image_guidance_scale"] = cfg.image_guidance
    if name.startswith("OmniGen"):
        args["img_guidance_scale"] = cfg.image_guidance
    if name.startswith("FluxKontext") and size is not None:  # else it snaps to ~1 megapixel
        args.update(max_area=size[0] * size[1], _auto_resize=False)
    return args


def edit_inputs(pipe, instructions: list[str], images: list[Image.Image]) -> dict[str, Any]:
    """The (instruction, image) pairs as the pipeline reads them."""
    if type(pipe).__name__.startswith("OmniGen"):
        return {"prompt": [f"<img><|image_1|></img> {t}" for t in instructions], "input_images": [[i] for i in images]}
    return {"prompt": instructions, "image": images}


def resized(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """RGB at `size` (height, width); None keeps the size."""
    image = image.convert("RGB")
    if size is None or image.size == (size[1], size[0]):
        return image
    return image.resize((size[1], size[0]), Image.Resampling.LANCZOS)


def to_pil(image: np.ndarray, size: tuple[int, int] | None) -> Image.Image:
    return resized(Image.fromarray(np.asarray(image, dtype=np.uint8)), size)


def to_array(image: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    return np.array(resized(image, size), dtype=np.uint8)


class DiffusersImageModel:
    """Generator and Editor on local diffusers pipelines. Both roles' workers run in threads and
    may share modules (and a scheduler's state), so calls take turns."""

    def __init__(self, cfg: DiffusersImageConfig):
        self.cfg = cfg
        self.path = Path(cfg.path).expanduser()
        self.edit_path = Path(cfg.edit_path).expanduser() if cfg.edit_path else self.path
        self.t2i, self.editor = load_pipelines(cfg)
        self._lock = threading.Lock()

    @property
    def working_size(self) -> tuple[int, int] | None:
        return (self.cfg.height, self.cfg.width) if self.cfg.height else None

    def _call(self, pipe, seeds: list[int], inputs: dict[str, Any], size, extra: dict[str, Any]) -> list[np.ndarray]:
        args = dict(inputs, num_inference_steps=self.cfg.steps, output_type="pil",
                    generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds])
        args.update(family_args(pipe, self.cfg, len(seeds), size), **extra)
        with self._lock, torch.inference_mode():
            images = pipe(**args).images
        return [to_array(image, self.cfg.output_size) for image in images]

    def generate(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        return self._call(self.t2i, seeds, {"prompt": list(prompts)}, self.working_size, self.cfg.generate_args)

    def edit(self, images: list[np.ndarray], instructions: list[str], seeds: list[int]) -> list[np.ndarray]:
        """Sources are resized to the working size (or to the first source's size), so a batch has one size."""
        size = self.working_size or tuple(np.asarray(images[0]).shape[:2])
        sources = [to_pil(image, size) for image in images]
        return self._call(self.editor, seeds, edit_inputs(self.editor, list(instructions), sources), size,
                          self.cfg.edit_args)
