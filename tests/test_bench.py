"""`refloop bench` on a tiny random unified model: the arms on the same prompts and seeds, the
report files, `--perf` at small scale, and refusals of bad input.

The critic is a test double whose reflection is a function of the image (so every arm hears the
same thing about the same image); best-of-N is picked by the tiny model's own verdict probability."""

import asyncio
import json
import threading
import time

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from agent.bench import ARMS, arm_configs, perf_specs, run_bench, run_perf
from agent.cli import app
from agent.config import RunConfig
from agent.metrics import by_family
from agent.runner import SessionSpec, make_judge, make_runtime
from agent.store import RunStore
from model.worker import BusyClock
from world import check_image, suite

runner = CliRunner()


class HashCritic:
    def critique(self, prompts, images):
        return ["verdict: right" if int(np.asarray(img, np.int64).sum()) % 3 == 0
                else "verdict: wrong\nedit: add a red circle" for img in images]


@pytest.fixture(scope="module")
def image_folder(tiny_models):
    return tiny_models / "unified"


def tiny_config(folder, **kw) -> RunConfig:
    return RunConfig.model_validate({**kw, "models": {"image": {"path": str(folder)}, "critic": {"path": str(folder)}}})


@pytest.fixture(scope="module")
def factory(image_folder):
    # imported when used: collecting this module stays light
    from model.unified.backend import UnifiedRoles
    from model.unified.config import UnifiedBackendConfig

    model = UnifiedRoles(UnifiedBackendConfig(path=str(image_folder)))

    def make(store, cfg):
        return make_runtime(store, model, model, HashCritic(), cfg.stop, judge=make_judge(cfg),
                            verifier=lambda p, img: check_image(p, img).ok, max_batch=cfg.max_batch,
                            search=cfg.search)
    return make


def dev_specs(per_family):
    return [SessionSpec(id=i.id, prompt=i.prompt, family=i.family, seed=i.seed) for i in suite("dev", per_family)]


def test_the_arms_on_the_same_prompts_and_the_report_files(tmp_path, factory, image_folder):
    cfg, specs, out = tiny_config(image_folder, concurrency=8, max_batch=8), dev_specs(2), tmp_path / "bench"
    report = run_bench(cfg, specs, out, factory, "dev", max_rounds=2)

    data = json.loads((out / "bench.json").read_text())
    assert set(data) >= {"suite", "sessions", "max_rounds", "budget", "budget_rule", "arms", "targets"}
    assert data["budget"] == 3 and set(data["arms"]) == set(ARMS) and data["sessions"] == len(specs)
    families = {s.family for s in specs} | {"overall"}
    stores = {name: RunStore.open(out / name) for name in ARMS}
    records = {name: list(store.sessions()) for name, store in stores.items()}
    for name, arm in data["arms"].items():
        assert set(arm["metrics"]) == families and arm["wall_seconds"] > 0
        assert arm["metrics"] == {k: m.model_dump(mode="json") for k, m in by_family(records[name]).items()}
        assert [(r.id, r.prompt, r.seed) for r in records[name]] == sorted((s.id, s.prompt, s.seed) for s in specs)
        assert all(r.status == "done" for r in records[name])
    assert [stores[n].manifest.config["stop"]["max_rounds"] for n in ARMS] == [0, 0, 0, 2]
    assert stores["best_of_n"].manifest.config["search"]["judge"] == "model"
    assert stores["best_of_n_oracle"].manifest.config["search"]["judge"] == "verifier"

    one_shot, best_of, oracle, reflection = (report.arms[n].metrics["overall"] for n in ARMS)
    assert one_shot.calls_per_session["generator"] == 1 and one_shot.mean_rounds == 1
    assert best_of.calls_per_session["generator"] == 3 and best_of.calls_per_session["judge"] == 3
    assert reflection.calls_per_session.get("editor", 0) + reflection.calls_per_session["generator"] <= 3
    assert reflection.mean_rounds > 1  # the hash critic asked for edits
    for a, b, o, c in zip(*records.values()):  # candidate 0 of best-of-N is the one-shot image, as is round 0
        first = stores["one_shot"].load_image(a.rounds[0].image)
        for arm, path in (("best_of_n", b.rounds[0].candidates[0]), ("best_of_n_oracle", o.rounds[0].candidates[0]),
                          ("reflection", c.rounds[0].image)):
            # the same seed, up to a pixel here and there: a batched row is not bit-exact across batch mates
            assert np.mean(stores[arm].load_image(path) != first) < 0.01
    assert oracle.acc_final >= max(one_shot.acc_final, best_of.acc_final)  # the verifier keeps a right one

    targets = {t["name"]: t for t in data["targets"]}
    margin = targets["reflection - best-of-N Acc@final (same judge)"]
    assert margin["value"] == pytest.approx(reflection.acc_final - best_of.acc_final)
    assert margin["met"] == (margin["value"] >= 0.05)
    md = (out / "bench.md").read_text()
    assert "| family | arm | n | Acc@0 | Acc@final |" in md and "N = 3" in md
    assert sum(line.startswith("| overall |") for line in md.splitlines()) == 4
    assert sum(line.startswith("| colors |") for line in md.splitlines()) == 4
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    result = runner.invoke(app, ["inspect", str(out / "reflection")])
    assert result.exit_code == 0 and "self-correction by family" in result.output


def test_budget_follows_the_reflection_arm_search():
    cfg = RunConfig.model_validate({"search": {"best_of": 2, "revisions": 3, "judge": "verifier"}})
    arms = arm_configs(cfg, 4)
    assert arms["best_of_n"].search.judge == "model" and arms["best_of_n"].models.judge.kind == "unified"
    assert arms["best_of_n_oracle"].search.judge == "verifier"
    no_model_judge = RunConfig.model_validate({"models": {"critic": {"kind": "hf_vlm", "path": "/x"}}})
    assert set(arm_configs(no_model_judge, 4)) == {"one_shot", "best_of_n", "reflection"}
    assert arms["best_of_n"].search.best_of == 2 + 4 * 3 and arms["best_of_n"].stop.max_rounds == 0
    assert arms["reflection"].search == cfg.search and arms["one_shot"].search.best_of == 1


def test_perf_at_tiny_scale(tmp_path, factory):
    cfg, specs = RunConfig(), perf_specs(dev_specs(2), 8)
    assert len({s.family for s in specs}) == 7
    forgot = []
    report = run_perf(cfg, specs, tmp_path / "perf", factory, max_rounds=2, forget=lambda: forgot.append(1))
    assert len(forgot) == 7  # before each arm, the latency run, and each half of the two ceilings
    assert report.sessions == 8 and report.speedup == pytest.approx(report.serial_wall_seconds /
                                                                     report.batched_wall_seconds)
    assert report.batched_sessions_per_second == pytest.approx(8 / report.batched_wall_seconds)
    assert 0 < report.model_busy_seconds <= report.batched_wall_seconds
    assert 0 <= report.outside_model_share < 1 and report.mean_batch["generator"] > 1
    assert 1 <= report.latency_rounds <= 3 and report.latency_seconds > 0
    rounds = {r.id: len(r.rounds) for r in RunStore.open(tmp_path / "perf" / "perf_batched").sessions()}
    alone = RunStore.open(tmp_path / "perf" / "perf_latency").session_ids()
    assert rounds[alone[0]] == max(rounds.values())  # the session that went furthest, timed alone
    ceiling = report.batching_ceiling
    assert set(ceiling) == {"generator", "critic"} and all(v > 0 for v in ceiling.values())
    assert json.loads((tmp_path / "perf" / "perf.json").read_text())["sessions"] == 8
    counts = {name: len(RunStore.open(tmp_path / "perf" / name).session_ids())
              for name in ("perf_batched", "perf_serial", "perf_latency")}
    assert counts == {"perf_batched": 8, "perf_serial": 8, "perf_latency": 1}
    serial = RunStore.open(tmp_path / "perf" / "perf_serial").manifest.config
    assert (serial["concurrency"], serial["max_batch"]) == (1, 1)


def test_busy_clock_counts_overlapping_calls_once():
    clock = BusyClock()

    def busy():
        with clock:
            time.sleep(0.2)

    threads = [threading.Thread(target=busy) for _ in range(3)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0.2 <= clock.seconds <= time.perf_counter() - t0 < 0.5


def test_worker_reports_model_time_to_its_clock():
    from model.worker import BatchedWorker

    async def go():
        clock = BusyClock()
        worker = BatchedWorker("w", lambda xs: [time.sleep(0.05) or x for x in xs], max_batch=4, clock=clock)
        out = await asyncio.gather(*(worker(i) for i in range(4)))
        await worker.close()
        return out, clock.seconds

    out, seconds = asyncio.run(go())
    assert out == [0, 1, 2, 3] and 0.2 <= seconds < 0.4


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    """`refloop bench` on stand-in models (tests/fakes.py), whatever embedded model ships; its config."""
    from tests.fakes import use_fake_models

    use_fake_models(monkeypatch, tmp_path / "models")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"concurrency": 4, "max_batch": 4, "stop": {"max_rounds": 1}}))
    return path


def test_bench_command_end_to_end(tmp_path, fake_cli):
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--suite", "dev", "--per-family", "1", "--max-rounds", "1",
                                 "--config", str(fake_cli), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "targets" in result.output and "best-of-2" in result.output
    assert {p.name for p in out.iterdir()} == {*ARMS, "bench.json", "bench.md", "bench.png"}
    assert json.loads((out / "bench.json").read_text())["arms"]["reflection"]["metrics"]["overall"]["sessions"] == 7


def test_bench_exits_1_when_a_session_failed(tmp_path, monkeypatch, fake_cli):
    from tests.fakes import use_fake_models
    from world import suite

    use_fake_models(monkeypatch, tmp_path / "models", fail_on=suite("dev", 1)[0].prompt)
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--per-family", "1", "--config", str(fake_cli), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "sessions failed or unfinished in:" in result.output and "one_shot" in result.output


@pytest.mark.slow
def test_perf_command_prints_its_figures(tmp_path, fake_cli):
    out = tmp_path / "perf"
    result = runner.invoke(app, ["bench", "--perf", "--max-rounds", "1", "--config", str(fake_cli), "--out", str(out)],
                           env={"COLUMNS": "100"})  # rich under pytest, transformers imported: too narrow
    assert result.exit_code == 0, result.output
    for figure in ("sessions/s, batched", "one session at a time", "speed-up", "outside model calls", "latency",
                   "batching ceiling"):
        assert figure in result.output, result.output
    perf = json.loads((out / "perf.json").read_text())
    assert perf["sessions"] == 32 and perf["max_rounds"] == 1
    assert len(RunStore.open(out / "perf_serial").session_ids()) == 32


@pytest.mark.parametrize("extra,config,message", [
    (["--max-rounds", "-1"], {}, "--max-rounds must be between 0 and 100"),
    ([], {"stop": {"max_round": 2}}, "stop.max_round is not a known setting"),
    ([], {"search": {"best_of": 2}}, "needs a judge"),
    ([], {"models": {"critic": {"path": "/nonexistent/critic"}, "image": {"path": "/nonexistent/image"}}},
     "/nonexistent/"),
    (["--suite", "validation"], {}, "unknown split"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, extra, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--per-family", "1", "--config", str(path), "--out", str(out)] + extra)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_an_unusable_out_folder_exits_2(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "a-file").write_text("x")
    for out, message in ((tmp_path / "taken", "not empty"), (tmp_path / "a-file" / "bench", "is a file")):
        result = runner.invoke(app, ["bench", "--per-family", "1", "--out", str(out)])
        assert result.exit_code == 2 and message in result.output, result.output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
