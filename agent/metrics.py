"""Self-correction metrics of a set of sessions (DESIGN.md): Acc@0, Acc@final, delta,
delta i->c (wrong then right), delta c->i (right then wrong), the repair rate (the share of
wrong first images that end right), accuracy per round, rounds,
model calls and time per session. Correctness is each round's ground truth (`correct`): the
task's verifier, or the judge where a task has none. Where no session has it (an open task
without a judge), the accuracies are None and read "unknown": never counted as wrong."""

from __future__ import annotations

from collections import Counter, defaultdict

from pydantic import BaseModel

from agent.trajectory import SessionRecord


class Metrics(BaseModel):
    sessions: int
    judged: int  # sessions whose first and last rounds have a ground-truth verdict
    acc0: float | None  # None: no session has a verdict (unknown)
    acc_final: float | None
    delta: float | None
    i_to_c: float | None
    c_to_i: float | None
    repair: float | None = None  # of the sessions whose first image was wrong, the share that ended right
    acc_by_round: list[float]  # a session that stopped keeps its last image in later rounds; [] when unknown
    mean_rounds: float
    calls_per_session: dict[str, float]
    seconds_per_session: float
    stop_reasons: dict[str, int]


def share(count: int, total: int) -> float | None:
    return count / total if total else None


def fmt(value: float | None, signed: bool = False) -> str:
    """A metric as the tables print it: 3 decimals, or 'unknown'."""
    if value is None:
        return "unknown"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def metrics(records: list[SessionRecord]) -> Metrics:
    judged = [r for r in records if r.rounds and r.rounds[0].correct is not None and r.final_round.correct is not None]
    n, j = len(records), len(judged)
    first = [bool(r.rounds[0].correct) for r in judged]
    last = [bool(r.final_round.correct) for r in judged]  # the image the session ended on
    depth = max((len(r.rounds) for r in judged), default=0)
    by_round = [sum(bool(r.rounds[min(k, len(r.rounds) - 1)].correct) for r in judged) / j for k in range(depth)]
    calls: Counter = Counter()
    seconds = 0.0
    for r in records:
        for rnd in r.rounds:
            calls.update(rnd.calls)
            seconds += sum(rnd.timings.values())
    reasons = Counter(r.stop_reason or ("failed" if r.status == "failed" else r.status) for r in records)
    return Metrics(
        sessions=n, judged=len(judged), acc0=share(sum(first), j), acc_final=share(sum(last), j),
        delta=share(sum(last) - sum(first), j),
        i_to_c=share(sum(not a and b for a, b in zip(first, last)), j),
        c_to_i=share(sum(a and not b for a, b in zip(first, last)), j),
        repair=share(sum(not a and b for a, b in zip(first, last)), first.count(False)),
        acc_by_round=by_round, mean_rounds=sum(len(r.rounds) for r in records) / max(n, 1),
        calls_per_session={k: v / max(n, 1) for k, v in sorted(calls.items())},
        seconds_per_session=seconds / max(n, 1), stop_reasons=dict(reasons.most_common()))


def by_family(records: list[SessionRecord]) -> dict[str, Metrics]:
    """Metrics per task family, then 'overall'."""
    groups: dict[str, list[SessionRecord]] = defaultdict(list)
    for r in records:
        groups[r.family or "unknown"].append(r)
    out = {f: metrics(rs) for f, rs in sorted(groups.items())}
    out["overall"] = metrics(records)
    return out


def flips(records: list[SessionRecord]) -> dict[str, list[SessionRecord]]:
    """Sessions worth a look: wrong then right, right then wrong, and still wrong at the end."""
    out: dict[str, list[SessionRecord]] = {"wrong -> right": [], "right -> wrong": [], "wrong at the end": []}
    for r in records:
        if not r.rounds or r.rounds[0].correct is None or r.final_round.correct is None:
            continue
        a, b = r.rounds[0].correct, r.final_round.correct
        if not a and b:
            out["wrong -> right"].append(r)
        elif a and not b:
            out["right -> wrong"].append(r)
        if not b:
            out["wrong at the end"].append(r)
    return out
