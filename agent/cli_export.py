"""`refloop export KIND RUN_DIR... --out DIR`: trajectories as a TRL-ready `datasets` folder.

Every run is opened and every option checked (a reward key a run lacks, an option the kind does
not take) before anything is written; the dataset lands in --out whole or not at all.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from agent.errors import UsageError, check_finite, refusals


class Kind(StrEnum):
    sft = "sft"
    preference = "preference"
    grpo = "grpo"


ONLY = {"form": "sft", "include_final": "sft", "reward_key": "sft or preference", "min_margin": "preference",
        "rounds": "grpo"}


def export_cmd(
    kind: Kind = typer.Argument(..., help="sft (SFTTrainer), preference (DPOTrainer) or grpo (GRPOTrainer)."),
    runs: list[Path] = typer.Argument(..., help="Run directories written by refloop run."),
    out: Path = typer.Option(..., help="The dataset folder to write (load it with datasets.load_from_disk)."),
    reward_key: str = typer.Option(None, help="The round reward that ranks critiques: verifier, judge, ... "
                                              "Default: verifier where every run has it, else judge (open task)."),
    form: str = typer.Option(None, help="sft: messages (default) or prompt_completion."),
    include_final: bool = typer.Option(None, help="sft: also the last round's critique."),
    min_margin: float = typer.Option(None, help="preference: least reward gap of a pair (default 0)."),
    rounds: str = typer.Option(None, help="grpo: first (default) or all rounds' images."),
    include_unfinished: bool = typer.Option(False, help="Sessions still running or failed too."),
    request: str = typer.Option(None, help="The user turn, {prompt} in it; default: what the run's critic was asked."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """Export runs' trajectories as SFT, preference (DPO) or GRPO data in TRL's vision formats.

    Exit status: 0 written; 2 bad input (nothing written).
    """
    from agent.store import RunStore

    given = {"reward_key": reward_key, "form": form, "include_final": include_final, "min_margin": min_margin,
             "rounds": rounds}
    options = {k: v for k, v in given.items() if v is not None}
    with refusals():
        for name in options:
            if kind.value not in ONLY[name]:
                raise UsageError(f"--{name.replace('_', '-')} applies to {ONLY[name]} exports, not {kind.value}")
        if form not in (None, "messages", "prompt_completion"):
            raise UsageError(f"--form {form!r}: use messages or prompt_completion")
        if rounds not in (None, "first", "all"):
            raise UsageError(f"--rounds {rounds!r}: use first or all")
        check_finite("--min-margin", min_margin)
        if out.exists() and not overwrite:
            raise UsageError(f"--out {out} exists; choose a new folder or pass --overwrite")
        if request is not None and "{prompt}" not in request:
            raise UsageError("--request must contain {prompt} (the session's prompt goes there)")
        stores = [RunStore.open(run) for run in runs]
        from agent.export import export  # datasets: only once the input is read

        path = export(stores, kind.value, out, overwrite=overwrite, include_unfinished=include_unfinished,
                      request=request, **options)
    from datasets import load_from_disk

    typer.echo(f"{kind.value}: {len(load_from_disk(str(path)))} rows -> {path}")
