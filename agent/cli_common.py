"""What `run`, `run --resume`, `bench` and `replay` share: reading and checking their input (run
config, prompts, output folder, a run's saved prompts) before anything is written, and loading the
models with a status line. Every check raises agent.errors.UsageError with a one-line message.
Heavy libraries (torch, transformers, diffusers, langgraph) are imported only when models load.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.errors import UsageError, check_whole, non_finite, plain_errors, read_json_objects, read_yaml_mapping, short
from agent.trajectory import SessionSpec

SPECS = "prompts.jsonl"  # a run's sessions (id, prompt, seed, family), written when it is created
MAX_ROUNDS = 100  # revisions per session
MAX_PARALLEL = 4096  # concurrency and max_batch
MAX_WIDTH = 64  # search.best_of and search.revisions
MAX_PROMPT = 1000  # characters of one prompt
MAX_SEED = 2**63 - 1


# -- run config ----------------------------------------------------------------------------------


def load_run_config(path: Path | None, max_rounds: int | None = None, what: str = "--config"):
    """The run config: YAML (or the defaults) and the --max-rounds override, checked."""
    if max_rounds is not None:
        check_whole("--max-rounds", max_rounds, 0, MAX_ROUNDS)
    data = read_yaml_mapping(path, f"{what} file") if path is not None else {}
    if max_rounds is not None:
        stop = data.setdefault("stop", {})
        if not isinstance(stop, dict):
            raise UsageError(f"{what} {path}: 'stop' must be a mapping of settings")
        stop["max_rounds"] = max_rounds
    where = f"{what} {path}" if path is not None else "run config"
    return run_config(data, where)


def run_config(data: Any, where: str):
    """RunConfig from a mapping (a YAML file's, or a run manifest's), with bounds on every number."""
    from agent.config import RunConfig  # imports the model backends (torch)

    if (bad := non_finite(data)) is not None:
        raise UsageError(f"{where}: {bad} must be a finite number (NaN and infinity are refused)")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise UsageError(plain_errors(e, where)) from None
    check_whole(f"{where}: stop.max_rounds", cfg.stop.max_rounds, 0, MAX_ROUNDS)
    check_whole(f"{where}: concurrency", cfg.concurrency, 1, MAX_PARALLEL)
    check_whole(f"{where}: max_batch", cfg.max_batch, 1, MAX_PARALLEL)
    check_whole(f"{where}: search.best_of", cfg.search.best_of, 1, MAX_WIDTH)
    check_whole(f"{where}: search.revisions", cfg.search.revisions, 1, MAX_WIDTH)
    check_whole(f"{where}: seed", cfg.seed, 0, MAX_SEED)
    if (bad := non_finite(cfg.model_dump(mode="python"))) is not None:
        raise UsageError(f"{where}: {bad} must be a finite number (NaN and infinity are refused)")
    return cfg


# -- prompts ---------------------------------------------------------------------------------------


def read_specs(prompts: list[str] | None, prompts_file: Path | None, suite_name: str | None,
               per_family: int | None, seed: int) -> list[SessionSpec]:
    """The sessions to run, from exactly one source, each prompt read by the embedded world."""
    from world import PromptError, parse_prompt, suite

    sources = [s for s in (prompts, prompts_file, suite_name) if s]
    if len(sources) != 1:
        raise UsageError("give prompts as arguments, or --prompts FILE.jsonl, or --suite NAME (exactly one)")
    if per_family is not None:
        if not suite_name:
            raise UsageError("--per-family goes with --suite NAME")
        check_whole("--per-family", per_family, 1, 100_000)
    if suite_name:
        try:
            items = suite(suite_name, per_family)
        except ValueError as e:
            raise UsageError(f"--suite {short(suite_name)}: {e}") from None
        return [SessionSpec(id=i.id, prompt=i.prompt, family=i.family, seed=i.seed) for i in items]
    if prompts_file:
        specs = [spec_from_row(row, n, prompts_file, seed) for n, row in read_json_objects(prompts_file,
                                                                                           "--prompts file")]
        if not specs:
            raise UsageError(f"--prompts file {prompts_file} has no prompts; write one JSON object a line")
    else:
        specs = []
        for n, p in enumerate(prompts):
            check_prompt(p, f"prompt {n + 1}")
            specs.append(SessionSpec(id=f"p{n:05d}", prompt=p, seed=seed + n))
    for spec in specs:  # the embedded world reads its prompts: say which one does not parse
        try:
            spec.family = spec.family or parse_prompt(spec.prompt).family
        except PromptError as e:
            raise UsageError(f"session {spec.id}: {e}") from None
    if dup := [i for i, c in Counter(s.id for s in specs).items() if c > 1]:
        raise UsageError(f"duplicate session ids: {', '.join(dup[:5])}; give every line its own id")
    return specs


def check_prompt(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise UsageError(f"{where}: the prompt must be text, got {short(text)}")
    if not text.strip():
        raise UsageError(f"{where}: the prompt is empty")
    if len(text) > MAX_PROMPT:
        raise UsageError(f"{where}: the prompt {short(text)} is longer than {MAX_PROMPT:,} characters")
    return text


def spec_from_row(row: dict[str, Any], n: int, path: Path, seed: int) -> SessionSpec:
    from agent.trajectory import is_safe_id

    where = f"--prompts file {path}, line {n}"
    if "prompt" not in row:
        raise UsageError(f"{where}: no 'prompt'; write objects like {{\"prompt\": \"a red circle\"}}")
    prompt = check_prompt(row["prompt"], where)
    sid = row.get("id", f"p{n:05d}")
    if isinstance(sid, int) and not isinstance(sid, bool):
        sid = str(sid)
    if not is_safe_id(sid):
        raise UsageError(f"{where}: id {short(sid)} cannot be a file name; use letters, digits, '-', '_', '.' "
                         "(no leading dot, at most 200)")
    family = row.get("family")
    if family is not None and not isinstance(family, str):
        raise UsageError(f"{where}: 'family' must be text, got {short(family)}")
    value = check_whole(f"{where}: seed", row.get("seed", seed + n), 0, MAX_SEED)
    return SessionSpec(id=sid, prompt=prompt, family=family, seed=value)


def saved_specs(store) -> list[SessionSpec]:
    """The sessions a run was created with (RUN/prompts.jsonl)."""
    path = store.root / SPECS
    if not path.is_file():
        raise UsageError(f"run {store.root} has no {SPECS}: it was not made by `refloop run`, so it cannot be resumed")
    specs = []
    for n, row in read_json_objects(path, "saved prompts"):
        try:
            specs.append(SessionSpec.model_validate(row))
        except ValidationError as e:
            raise UsageError(plain_errors(e, f"saved prompts {path}, line {n}")) from None
    return specs


# -- output folders ------------------------------------------------------------------------------


def check_out_dir(out: Path, what: str = "--out") -> None:
    """A new or empty directory, under a directory we can write to (checked before models load)."""
    out = Path(out)
    if (out / "manifest.json").exists():
        raise UsageError(f"{what} {out} is already a refloop run; finish it with `refloop run --resume {out}` "
                         "or choose a new directory")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{what} {out} is a file; choose a new or empty directory")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"{what} {out} exists and is not empty; choose a new or empty directory")
    parent = next(p for p in [out.absolute(), *out.absolute().parents] if p.exists())
    if not parent.is_dir():
        raise UsageError(f"{what} {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {out}: {parent} is not writable; choose another directory")


# -- models ----------------------------------------------------------------------------------------


def load_models_or_refuse(cfg, console=None):
    """(image model, critic, judge), with a status line while they load; UsageError when a model
    folder cannot be loaded."""
    from contextlib import nullcontext

    status = console.status("loading models (torch, the image model, the critic) ...") if console else nullcontext()
    with status:
        from agent.runner import load_models
        from model.backends.served_client import ServedModelError

        try:
            return load_models(cfg)
        except ServedModelError as e:  # a served model: its own line names the URL and the fix
            raise UsageError(str(e)) from None
        except (OSError, ValueError) as e:  # the backends' own words: which folder, what is missing
            raise UsageError(f"{e}; check the model folders in the run config") from None
        except Exception as e:  # noqa: BLE001 - any other failure to load a folder is the folder's too
            raise UsageError(f"cannot load the models ({type(e).__name__}: {e}); check the model folders "
                             "in the run config") from None


def folder_hash(path: Path) -> str | None:
    """A digest of a model folder's files; None for a model that is no local folder (a served one)."""
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]
