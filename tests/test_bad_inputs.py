"""Bad input, command by command: each is refused with exit 2 and one line that names the input, and
nothing on disk is written or changed. No model is loaded: every refusal comes before that."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from agent.cli import app
from agent.cli_common import SPECS
from agent.store import RunStore
from agent.trajectory import RoundRecord, RunManifest, SessionRecord, SessionSpec
from tests.fakes import use_fake_models

runner = CliRunner()
LONG = "x" * 10_000
WORDING = ("Traceback", "Errno", ".tmp", "Input should", "validation error", "RunStore.open", "pydantic")

# (args, message the output must contain); {t} is the test's folder, {run} a finished run in it
CASES = [
    # world
    (["world", "sample", "a hexagon", "--out", "{t}/x.png"], "'hexagon'"),
    (["world", "sample", "", "--out", "{t}/x.png"], "empty"),
    (["world", "sample", "a circle", "--out", "{t}"], "is a directory"),
    (["world", "sample", "a circle", "--out", "{t}/x.png", "--seed", "-1"], "--seed must be between 0"),
    (["world", "sample", LONG, "--out", "{t}/x.png"], "(10,000 characters)"),
    (["world", "check", "a circle", "{t}/missing.png"], "no such image"),
    (["world", "check", "a circle", "{t}/in/not-image.png"], "cannot read"),
    (["world", "check", "a circle", "{t}/in/small.png"], "64x64"),
    (["world", "check", "a circle", "{t}/in"], "no such image file"),
    (["world", "suite", "validation"], "unknown split"),
    (["world", "suite", "dev", "--per-family", "0"], "--per-family must be between 1"),
    (["world", "suite", "dev", "--out", "{t}"], "is a directory"),
    (["world", "bench", "--scenes", "5"], "--scenes must be between 100"),
    (["world", "generate", "a circle", "--out", "{t}/x.png", "--guidance", "nan"], "--guidance must be a finite"),
    (["world", "generate", "a circle", "--out", "{t}/x.png", "--model", "{t}/nope"], "is not a model folder"),
    (["world", "train", "unified", "--config", "{t}/in/coldplay.yaml", "--work", "{t}/w"],
     "selfplay.temperature must be more than 0"),
    (["world", "train", "unified", "--config", "{t}/in/flawed.yaml", "--work", "{t}/w"],
     "selfplay.flawed must be at least 0"),
    (["world", "train", "unified", "--config", "{t}/in/rounds.yaml", "--work", "{t}/w"],
     "selfplay.guidance lists 2 values for 3 rounds"),
    (["world", "generate", "a circle", "--out", "{t}"], "is a directory"),
    (["world", "generate", "a circle", "--out", "{t}/x.png", "--model", "{t}/badmodel"], "badmodel"),
    (["run", "a circle", "--config", "{t}/in/badmodel.yaml"], "badmodel"),
    (["world", "edit", "{t}/in/small.png", "make the circle red", "--out", "{t}/x.png", "--model", "{t}/nope"],
     "is not a model folder"),
    (["world", "generate", "a circle", "--out", "{t}/x.png", "--guidance", "-inf"], "--guidance must be a finite"),
    # run: prompts
    (["run", ""], "the prompt is empty"),
    (["run", "a hexagon"], "'hexagon'"),
    (["run"], "exactly one"),
    (["run", "a circle", "--suite", "dev"], "exactly one"),
    (["run", LONG], "(10,000 characters)"),
    (["run", "--suite", "validation"], "unknown split"),
    (["run", "a circle", "--per-family", "2"], "--per-family goes with --suite"),
    (["run", "--prompts", "{t}/missing.jsonl"], "does not exist"),
    (["run", "--prompts", "{t}/in"], "is a directory"),
    (["run", "--prompts", "{t}/in/empty.jsonl"], "is empty"),
    (["run", "--prompts", "{t}/in/blank.jsonl"], "is empty"),
    (["run", "--prompts", "{t}/in/latin1.jsonl"], "not UTF-8"),
    (["run", "--prompts", "{t}/in/list.jsonl"], "expected a JSON object"),
    (["run", "--prompts", "{t}/in/broken.jsonl"], "line 2: not JSON"),
    (["run", "--prompts", "{t}/in/noprompt.jsonl"], "no 'prompt'"),
    (["run", "--prompts", "{t}/in/badid.jsonl"], "cannot be a file name"),
    (["run", "--prompts", "{t}/in/nanseed.jsonl"], "seed must be a whole number"),
    (["run", "--prompts", "{t}/in/halfseed.jsonl"], "seed must be a whole number"),
    (["run", "--prompts", "{t}/in/dup.jsonl"], "duplicate session ids: a"),
    (["run", "--prompts", "{t}/in/numprompt.jsonl"], "the prompt must be text"),
    # run: numbers and config
    (["run", "a circle", "--max-rounds", "-1"], "--max-rounds must be between 0 and 100"),
    (["run", "a circle", "--max-rounds", "1000000000"], "--max-rounds must be between 0 and 100"),
    (["run", "a circle", "--config", "{t}/missing.yaml"], "does not exist"),
    (["run", "a circle", "--config", "{t}/in/bad.yaml"], "fix the YAML"),
    (["run", "a circle", "--config", "{t}/in/list.yaml"], "expected settings"),
    (["run", "a circle", "--config", "{t}/in/typo.yaml"], "stop.max_round is not a known setting"),
    (["run", "a circle", "--config", "{t}/in/zero.yaml"], "concurrency must be at least 1"),
    (["run", "a circle", "--config", "{t}/in/huge.yaml"], "max_batch must be between 1 and 4,096"),
    (["run", "a circle", "--config", "{t}/in/nan.yaml"], "stop.score_threshold must be a finite number"),
    (["run", "a circle", "--config", "{t}/in/nanguidance.yaml"], "models.image.guidance must be a finite"),
    (["run", "a circle", "--config", "{t}/in/wide.yaml"], "search.best_of must be between 1 and 64"),
    (["run", "a circle", "--config", "{t}/in/judge.yaml"], "search.judge must be one of 'verifier' or 'model'"),
    # run: output folder
    (["run", "a circle", "--out", "{run}"], "already a refloop run; finish it with `refloop run --resume"),
    (["run", "a circle", "--out", "{t}/in"], "exists and is not empty"),
    (["run", "a circle", "--out", "{t}/in/small.png"], "is a file"),
    # run --resume
    (["run", "--resume", "{run}", "a circle"], "drop PROMPTS"),
    (["run", "--resume", "{run}", "--max-rounds", "2"], "drop --max-rounds"),
    (["run", "--resume", "{run}", "--out", "{t}/new"], "drop --out"),
    (["run", "--resume", "{t}/missing"], "does not exist"),
    (["run", "--resume", "{t}/in"], "is not a refloop run"),
    (["run", "--resume", "{t}/corrupt"], "is not a valid run manifest"),
    (["run", "--resume", "{t}/nospecs"], "cannot be resumed"),
    (["run", "--resume", "{t}/badconfig"], "the config saved in"),
    # inspect, view
    (["inspect", "{t}/missing"], "does not exist"),
    (["inspect", "{t}/in"], "is not a refloop run"),
    (["inspect", "{t}/truncated"], "not JSON: truncated or corrupt"),
    (["inspect", "{run}", "--compare", "{t}/missing"], "does not exist"),
    (["view", "{t}/in"], "is not a refloop run"),
    (["view", "{run}", "--port", "70000"], "--port must be between 0 and 65535"),
    # replay
    (["replay", "{run}", "nobody", "--from-round", "0"], "no session 'nobody'"),
    (["replay", "{run}", "../x", "--from-round", "0"], "unsafe session id"),
    (["replay", "{run}", "s1", "--from-round", "9"], "--from-round 9: session s1 has rounds 0..0"),
    (["replay", "{run}", "s1", "--from-round", "-1"], "--from-round -1"),
    (["replay", "{run}", "s1"], "give --from-round K"),
    (["replay", "{run}", "s1", "--from-round", "0", "--critique", "looks fine"], "does not follow the format"),
    (["replay", "{run}", "s1", "--from-round", "0", "--critique", "verdict: right", "--critique-file",
      "{t}/in/list.yaml"], "not both"),
    (["replay", "{run}", "s1", "--from-round", "0", "--critique-file", "{t}/missing.txt"], "does not exist"),
    (["replay", "{run}", "s1", "--from-round", "0", "--critique-file", "{t}/in/latin1.jsonl"], "not UTF-8"),
    # bench
    (["bench", "--max-rounds", "1000"], "--max-rounds must be between 0 and 100"),
    (["bench", "--suite", "validation"], "unknown split"),
    (["bench", "--per-family", "1", "--out", "{t}/in"], "exists and is not empty"),
    (["bench", "--perf", "--per-family", "3"], "does not go with --perf"),
    (["bench", "--config", "{t}/in/nan.yaml"], "must be a finite number"),
]


def write_inputs(t):
    d = t / "in"
    d.mkdir()
    (d / "not-image.png").write_text("not a png")
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(d / "small.png")
    files = {
        "empty.jsonl": "", "blank.jsonl": "\n  \n\n", "list.jsonl": "[1, 2]\n",
        "broken.jsonl": '{"prompt": "a circle"}\n{"prompt": \n', "noprompt.jsonl": '{"text": "a circle"}\n',
        "badid.jsonl": '{"id": "../evil", "prompt": "a circle"}\n',
        "nanseed.jsonl": '{"prompt": "a circle", "seed": NaN}\n',
        "halfseed.jsonl": '{"prompt": "a circle", "seed": 1.5}\n', "numprompt.jsonl": '{"prompt": 7}\n',
        "dup.jsonl": '{"id": "a", "prompt": "a circle"}\n{"id": "a", "prompt": "a square"}\n',
        "bad.yaml": "stop: [max_rounds\n", "list.yaml": "- 1\n- 2\n", "typo.yaml": "stop: {max_round: 2}\n",
        "zero.yaml": "concurrency: 0\n", "huge.yaml": "max_batch: 100000\n",
        "nan.yaml": "stop: {score_threshold: .nan}\n",
        "nanguidance.yaml": "models: {image: {guidance: .nan}}\n",
        "wide.yaml": "search: {best_of: 1000, judge: verifier}\n",
        "judge.yaml": "search: {best_of: 2, judge: oracle}\n",
        "coldplay.yaml": "selfplay: {temperature: 0}\n", "flawed.yaml": "selfplay: {flawed: -1}\n",
        "rounds.yaml": "selfplay: {rounds: 3, guidance: [2.5, 1.5]}\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    (d / "latin1.jsonl").write_bytes('{"prompt": "un cercle rouge à gauche"}\n'.encode("latin-1"))


def make_run(path, config=None, specs=True):
    manifest = RunManifest(run_id=path.name, created_at=time.time(), seed=0, refloop_version="test",
                           config=config if config is not None else {"stop": {"max_rounds": 1}})
    with RunStore.create(path, manifest) as store:
        if specs:
            (store.root / SPECS).write_text(SessionSpec(id="s1", prompt="a circle", seed=0).model_dump_json() + "\n")
        image = store.put_image(np.full((64, 64, 3), 255, np.uint8))
        store.start_session(SessionRecord(id="s1", prompt="a circle", family="single_object", seed=0))
        store.upsert_round("s1", RoundRecord(index=0, image=image, critique="verdict: right", verdict="right"))
        store.finish_session("s1", "critic_satisfied")
        store.write_jsonl()
    return path


@pytest.fixture
def world(tmp_path, monkeypatch, request):
    t = tmp_path / "t"
    t.mkdir()
    write_inputs(t)
    make_run(t / "run")
    make_run(t / "corrupt")
    (t / "corrupt" / "manifest.json").write_text('{"run_id": ')
    make_run(t / "nospecs", specs=False)
    make_run(t / "badconfig", config={"concurrency": 0})
    (t / "badmodel").mkdir()  # a corrupt model folder: every file a model folder may have, unreadable
    for name in ("config.json", "model_index.json", "generation_config.json", "preprocessor_config.json"):
        (t / "badmodel" / name).write_text("{not json")
    (t / "badmodel" / "model.safetensors").write_bytes(b"\0" * 64)
    (t / "in" / "badmodel.yaml").write_text(f"models: {{image: {{path: {t / 'badmodel'}}}, "
                                            f"critic: {{path: {t / 'badmodel'}}}}}\n")
    make_run(t / "truncated")
    session = t / "truncated" / "sessions" / "s1.json"
    session.write_text(session.read_text()[:40])
    if getattr(request.node, "callspec", None) is None or request.node.callspec.params.get("message") != "badmodel":
        use_fake_models(monkeypatch, tmp_path / "models")  # a case that got as far as loading would run on these
    monkeypatch.chdir(t)  # a default --out (runs/...) would land here, and be seen
    return t


def snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
            for p in sorted(root.rglob("*"))}


def test_the_table_is_large_enough():
    assert len(CASES) >= 40
    assert {args[0] for args, _ in CASES} >= {"world", "run", "inspect", "view", "replay", "bench"}


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a)[:50] for a, _ in CASES])
def test_bad_input_is_refused_with_exit_2_and_changes_nothing(world, args, message):
    before = snapshot(world)
    result = runner.invoke(app, [a.format(t=world, run=world / "run") for a in args])
    assert result.exit_code == 2, result.output
    out = result.output
    assert message in out, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert len(out) < 500, f"{len(out)} characters"
    assert not any(w in out for w in WORDING), out
    assert snapshot(world) == before


def test_messages_are_one_line_even_for_multiline_inputs(world):
    result = runner.invoke(app, ["run", "a circle\nand\na hexagon"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_a_prompts_file_from_world_suite_is_accepted(world):
    """The suite's own export has extra keys (held_out): they are not bad input."""
    suite = world / "dev.jsonl"
    assert runner.invoke(app, ["world", "suite", "dev", "--per-family", "1", "--out", str(suite)]).exit_code == 0
    assert "held_out" in json.loads(suite.read_text().splitlines()[0])
    assert os.stat(suite).st_mode & 0o044  # readable by others, as the umask allows (not mkstemp's 0600)
    result = runner.invoke(app, ["run", "--prompts", str(suite), "--max-rounds", "0", "--out", str(world / "r")])
    assert result.exit_code == 0, result.output
