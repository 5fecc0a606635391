"""The CLI through typer's runner, and the installed console script once (the issue's done check)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli import app
from world.io import load_png

runner = CliRunner()
PROMPT = "two red circles above a blue square"


def test_sample_then_check(tmp_path):
    out = tmp_path / "x.png"
    assert runner.invoke(app, ["world", "sample", PROMPT, "--out", str(out)]).exit_code == 0
    ok = runner.invoke(app, ["world", "check", PROMPT, str(out)])
    assert ok.exit_code == 0 and "satisfied" in ok.output
    bad = runner.invoke(app, ["world", "check", "three red circles above a blue square", str(out)])
    assert bad.exit_code == 1 and "expected three red circles, found two" in bad.output
    js = runner.invoke(app, ["world", "check", PROMPT, str(out), "--json"])
    verdict = json.loads(js.output)
    assert verdict["ok"] and len(verdict["objects"]) == 3 and verdict["family"] == "complex"


def test_sample_grid_and_seed(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for path in (a, b):
        runner.invoke(app, ["world", "sample", "a circle", "three squares", "a red triangle", "--out", str(path)])
    grid = load_png(a, size=None)
    assert grid.shape == (130, 130, 3) and (grid == load_png(b, size=None)).all()


@pytest.mark.parametrize("args,message", [
    (["world", "sample", "a hexagon", "--out", "{tmp}/x.png"], "'hexagon'"),
    (["world", "check", "a circle", "{tmp}/missing.png"], "no such image"),
    (["world", "check", "a circle", "{tmp}/notimage.png"], "cannot read"),
    (["world", "check", "a circle", "{tmp}/small.png"], "64x64"),
    (["world", "check", "", "{tmp}/small.png"], "empty"),
    (["world", "suite", "validation"], "unknown split"),
])
def test_bad_input_exits_2(tmp_path, args, message):
    (tmp_path / "notimage.png").write_text("not a png")
    from PIL import Image
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(tmp_path / "small.png")
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "x.png").exists()


def test_suite_export(tmp_path):
    out = tmp_path / "dev.jsonl"
    assert runner.invoke(app, ["world", "suite", "dev", "--per-family", "3", "--out", str(out)]).exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 21 and {"id", "prompt", "family", "seed", "held_out"} <= rows[0].keys()


def test_bench_prints_figures():
    result = runner.invoke(app, ["world", "bench", "--scenes", "200", "--parse-images", "20"])
    assert result.exit_code == 0 and "render scenes" in result.output
    assert "14/14 rendered dev scenes verified correct" in result.output


REFLOOP = shutil.which("refloop", path=str(Path(sys.executable).parent)) or shutil.which("refloop")


@pytest.mark.skipif(REFLOOP is None, reason="console script not installed")
def test_console_script_done_check(tmp_path):
    out = tmp_path / "x.png"
    subprocess.run([REFLOOP, "world", "sample", PROMPT, "--out", str(out)], check=True)
    assert subprocess.run([REFLOOP, "world", "check", PROMPT, str(out)]).returncode == 0
    wrong = "three red circles above a blue square"
    assert subprocess.run([REFLOOP, "world", "check", wrong, str(out)]).returncode == 1


HEAVY = ("torch", "transformers", "diffusers", "langgraph", "matplotlib", "trl")
START = """
import sys
from agent.cli import app
try:
    app(sys.argv[1:], prog_name="refloop")
except SystemExit as e:
    code = e.code
print("heavy:", ",".join(m for m in {heavy!r} if m in sys.modules), "exit:", code)
"""


@pytest.mark.parametrize("args", [
    ["--help"], ["world", "--help"], ["run", "--help"], ["world", "sample", PROMPT, "--out", "{tmp}/x.png"],
    ["world", "check", PROMPT, "{tmp}/missing.png"], ["world", "suite", "dev", "--per-family", "1"],
    ["inspect", "{tmp}"], ["run", "a hexagon"], ["run", "a circle", "--max-rounds", "1000"],
    ["export", "sft", "{tmp}/no-run", "--out", "{tmp}/sft"],
])
def test_commands_that_need_no_model_import_no_heavy_library(tmp_path, args):
    """`refloop --help` and the world's model-free commands start in well under a second: torch,
    transformers, diffusers and langgraph are imported only where models load."""
    code = START.format(heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code, *[a.format(tmp=tmp_path) for a in args]],
                         capture_output=True, text=True, timeout=120).stdout
    assert "heavy:  exit:" in out, out[-500:]


@pytest.mark.parametrize("args", [["--help"], ["world", "--help"], ["bench", "--help"], ["inspect", "--help"]])
def test_help_imports_not_even_numpy(args):
    """Help reads no images or arrays: numpy and PIL (a sixth of its import time, measured) wait for a command."""
    code = START.format(heavy=(*HEAVY, "numpy", "PIL"))
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120).stdout
    assert "heavy:  exit: 0" in out, out[-500:]


def test_world_images_are_readable_by_others_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "x.png"
        assert runner.invoke(app, ["world", "sample", PROMPT, "--out", str(out)]).exit_code == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644
