import time

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from agent.cli import app
from agent.metrics import by_family, flips, metrics
from agent.store import RunStore
from agent.trajectory import RoundRecord, RunManifest, SessionRecord

# session id -> (family, correctness of each round)
SESSIONS = {"s1": ("colors", [False, True]), "s2": ("colors", [True]), "s3": ("counting", [True, False]),
            "s4": ("counting", [False, False, False])}


def make_run(path):
    store = RunStore.create(path, RunManifest(run_id=path.name, created_at=time.time(), seed=0,
                                              refloop_version="test"))
    image = store.put_image(np.full((64, 64, 3), 255, np.uint8))
    for sid, (family, correct) in SESSIONS.items():
        store.start_session(SessionRecord(id=sid, prompt="a circle", family=family, seed=0))
        for k, ok in enumerate(correct):
            store.upsert_round(sid, RoundRecord(index=k, image=image, correct=ok, rewards={"verifier": float(ok)},
                                                calls={"critic": 1, "generator" if k == 0 else "editor": 1},
                                                timings={"critique": 0.5}))
        store.finish_session(sid, "critic_satisfied" if correct[-1] else "max_rounds", image)
    return store


def test_metrics_of_known_sessions(tmp_path):
    records = list(make_run(tmp_path / "run").sessions())
    m = metrics(records)
    assert (m.acc0, m.acc_final, m.delta, m.i_to_c, m.c_to_i) == (0.5, 0.5, 0.0, 0.25, 0.25)
    assert m.repair == 0.5  # one of the two wrong first images ended right
    assert m.acc_by_round == [0.5, 0.5, 0.5] and m.mean_rounds == 2.0
    assert m.calls_per_session == {"critic": 2.0, "editor": 1.0, "generator": 1.0}  # 8 critic calls, 4 sessions
    assert m.stop_reasons == {"max_rounds": 2, "critic_satisfied": 2}
    fam = by_family(records)
    assert fam["colors"].acc0 == 0.5 and fam["colors"].acc_final == 1.0 and fam["counting"].c_to_i == 0.5
    assert [r.id for r in flips(records)["wrong -> right"]] == ["s1"]
    assert [r.id for r in flips(records)["right -> wrong"]] == ["s3"]


def test_inspect_command(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.cli_inspect.console", Console(width=250))
    make_run(tmp_path / "a")
    make_run(tmp_path / "b")
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(tmp_path / "a"), "--flips", "--failures"])
    assert result.exit_code == 0, result.output
    assert "0.500" in result.output and "+0.000" in result.output and "s1" in result.output and "s4" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "a"), "--compare", str(tmp_path / "b")])
    assert result.exit_code == 0 and "Acc@0 a" in result.output and "Acc@0 b" in result.output


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_inspect_refuses_what_is_not_a_run(tmp_path, where):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / where)])
    assert result.exit_code == 2 and "error" in result.output
