"""Trajectories -> Hugging Face `datasets`, in the conversational vision formats TRL 1.16 trainers take as is.

TRL's vision collators read an `images` column (a list of images) and messages whose `content`
is a plain string; `trl.data_utils.prepare_multimodal_messages` inserts one `{"type": "image"}`
placeholder per image before the first user message's text. So every row here has:

    sft (SFTTrainer)         images, messages = [user request, assistant critique]
                             (or prompt + completion, with form="prompt_completion")
    preference (DPOTrainer)  images, prompt = [user request], chosen / rejected = [assistant critique]
    grpo (GRPOTrainer)       images, prompt = [user request]

Extra columns say where a row came from. SFT and DPO drop them (`remove_unused_columns`, on
by default, keeps only their signature columns); GRPO passes them to reward functions as
keyword arguments (e.g. `task_prompt` for the verifier). No extra column is called `prompt`,
`image` or `messages`: TRL's `is_conversational` picks any one of those keys to decide.
Images are the stored PNG bytes, so a saved dataset does not depend on the run directory.
Rows are built in memory (a few KB per 64x64 image; shard by store for big runs).

The user turn is what the run's critic was asked (agent/export_runs.py: the config's template,
else the task's words). A run with `history: K` > 0 showed its critic the session's K earlier
images and its reflections on them first: its SFT and preference rows hold that conversation
(the earlier images, then the current one, in `images`; user turns as content parts with one
image placeholder each, earlier reflections as assistant turns), so a model trained on them sees
what the critic saw. An export with such a run writes every row's messages as content parts;
one without is as before, plain strings and one image. GRPO rows show the current image alone
(round 0, their default, has no history). The reward is the verifier's where runs have one, else the judge's
(open-task runs); `reward_key` names another, and a key a run lacks is refused (UsageError).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from datasets import Dataset, Features, Image, List, Value

from agent.export_runs import CriticView, assistant_parts, history_of, pick_reward_key
from agent.store import RunStore, StoreError
from agent.trajectory import SessionRecord

Stores = RunStore | Iterable[RunStore]
_MESSAGES = List({"role": Value("string"), "content": Value("string")})
_PARTS = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
_SOURCE = {"task_prompt": Value("string"), "family": Value("string"), "run_id": Value("string")}


def _stores(stores: Stores) -> list[RunStore]:
    return [stores] if isinstance(stores, RunStore) else list(stores)


def _sessions(stores: list[RunStore], include_unfinished: bool) -> Iterator[tuple[RunStore, SessionRecord]]:
    for store in stores:
        for session in store.sessions():
            if session.status == "done" or include_unfinished:
                yield store, session


class _Images:
    """PNG bytes per (run, path), read once: preference pairs reuse the same image."""

    def __init__(self):
        self.cache: dict[tuple[Path, str], dict] = {}

    def __call__(self, store: RunStore, rel: str | None) -> dict | None:
        if rel is None:
            return None
        key = (store.root, rel)
        if key not in self.cache:
            try:
                self.cache[key] = {"bytes": store.image_path(rel).read_bytes(), "path": None}
            except FileNotFoundError:
                raise StoreError(f"image {rel!r} of run {store.root} is missing") from None
        return self.cache[key]


class _Views:
    """What each run's critic saw (export_runs.CriticView), with `request` in place of its words when
    given; content parts for every row when any run showed its critic history."""

    def __init__(self, stores: list[RunStore], request: str | None):
        self.request, self.views = request, {}
        self.parts = any(history_of(store) for store in stores)
        self.messages = _PARTS if self.parts else _MESSAGES

    def view(self, store: RunStore) -> CriticView:
        if store.root not in self.views:  # read when a row needs it: a run without rows is not asked
            self.views[store.root] = CriticView(store, self.request)
        return self.views[store.root]

    def turns(self, store: RunStore, session: SessionRecord, k: int) -> tuple[list[str], list[dict]]:
        return self.view(store).turns(session, k, self.parts)

    def user_turn(self, store: RunStore, prompt: str) -> list[dict]:
        """The one user turn (GRPO): the critic's words beside one image."""
        return [{"role": "user", "content": self.view(store).ask.replace("{prompt}", prompt)}]

    def assistant(self, text: str) -> list[dict]:
        return [assistant_parts(text) if self.parts else {"role": "assistant", "content": text}]


def _dataset(rows: list[dict], features: Features) -> Dataset:
    return Dataset.from_dict({k: [row[k] for row in rows] for k in features}, features=features)


def sft_dataset(
    stores: Stores,
    *,
    form: Literal["messages", "prompt_completion"] = "messages",
    include_final: bool = False,
    include_unfinished: bool = False,
    reward_key: str | None = None,
    request: str | None = None,
) -> Dataset:
    """Reflection data for SFTTrainer: the round's image and the critic request -> the critique.

    One row per round that has a critique that parsed and a next round (the correction it led
    to, in `corrected_image` / `instruction`, for training an editor). `include_final` adds the
    last round's critique too (a critic that only ever sees "wrong" never learns to stop).
    `reward` / `next_reward` (under `reward_key`), `verdict` and `correct` are there to filter
    on, e.g. keep critiques whose verdict matches the ground truth. With form="messages",
    set SFTConfig(assistant_only_loss=True) to train on the critique only (the chat template
    must support it); form="prompt_completion" gets completion-only loss by default."""
    stores = _stores(stores)
    views = _Views(stores, request)
    kind = views.messages
    text = {"messages": kind} if form == "messages" else {"prompt": kind, "completion": kind}
    features = Features({
        "images": List(Image()), **text, "corrected_image": Image(), "instruction": Value("string"),
        "verdict": Value("string"), "correct": Value("bool"), "reward": Value("float64"),
        "next_reward": Value("float64"), **_SOURCE, "session_id": Value("string"), "round": Value("int64"),
    })
    reward_key = pick_reward_key(stores, reward_key, needed=False)
    image, rows = _Images(), []
    for store, s in _sessions(stores, include_unfinished):
        for k, r in enumerate(s.rounds):
            nxt = s.rounds[k + 1] if k + 1 < len(s.rounds) else None
            if r.critique is None or r.critique_error is not None or (nxt is None and not include_final):
                continue
            (paths, user), answer = views.turns(store, s, k), views.assistant(r.critique)
            rows.append({
                "images": [image(store, p) for p in paths],
                **({"messages": user + answer} if form == "messages" else {"prompt": user, "completion": answer}),
                "corrected_image": image(store, nxt.image) if nxt else None,
                "instruction": r.instruction, "verdict": r.verdict, "correct": r.correct,
                "reward": r.rewards.get(reward_key), "next_reward": nxt.rewards.get(reward_key) if nxt else None,
                "task_prompt": s.prompt, "family": s.family, "run_id": store.manifest.run_id,
                "session_id": s.id, "round": r.index,
            })
    return _dataset(rows, features)


def _outcome(s: SessionRecord, k: int, reward_key: str | None) -> float | None:
    """What a critique led to: the reward of the next round's image, or, when the loop kept this
    image because of it (the critic said "right", or wrote what could not be read, which ends a
    session), this image's own reward. None when unknown (an edit asked for and never made)."""
    if reward_key is None:
        return None
    if k + 1 < len(s.rounds):
        return s.rounds[k + 1].rewards.get(reward_key)
    if s.rounds[k].verdict == "right" or s.rounds[k].critique_error is not None:
        return s.rounds[k].rewards.get(reward_key)
    return None


def preference_dataset(
    stores: Stores,
    reward_key: str | None = None,
    *,
    min_margin: float = 0.0,
    include_unfinished: bool = False,
    request: str | None = None,
) -> Dataset:
    """Critique pairs for DPOTrainer: two critiques of the SAME image for the SAME prompt.

    DPO compares two answers to one prompt, and the critic's prompt includes the image, so
    critiques of different rounds (different images) cannot be paired. Critiques are grouped by
    prompt text and image path (content-addressed: same path = same pixels), across sessions
    and runs: repeated or forked sessions, or several critic samples per image, give the pairs.
    In a group, every two critiques whose outcomes (see `_outcome`, under `reward_key`: left out,
    the verifier's, else the judge's; agent/export_runs.py) differ by more than `min_margin`
    make a pair; the one that led to the higher reward is chosen. Unparsed
    critiques take part: a malformed critique that led nowhere good is a fine rejected one.
    `chosen_from` / `rejected_from` are "run_id:session_id:round"."""
    stores = _stores(stores)
    reward_key = pick_reward_key(stores, reward_key, needed=True)
    views = _Views(stores, request)
    groups: dict[tuple, list[tuple[RunStore, SessionRecord, int, float]]] = {}
    for store, s in _sessions(stores, include_unfinished):
        for k, r in enumerate(s.rounds):
            outcome = _outcome(s, k, reward_key) if r.critique is not None else None
            if outcome is not None:  # same prompt, same image, and (with history) the same conversation before it
                paths, user = views.turns(store, s, k)
                seen = (tuple(paths), repr(user)) if views.parts else ()
                groups.setdefault((s.prompt, r.image, seen), []).append((store, s, k, outcome))
    kind = views.messages
    features = Features({
        "images": List(Image()), "prompt": kind, "chosen": kind, "rejected": kind,
        "chosen_reward": Value("float64"), "rejected_reward": Value("float64"), **_SOURCE,
        "image_file": Value("string"), "chosen_from": Value("string"), "rejected_from": Value("string"),
    })
    image, rows = _Images(), []
    for (prompt, rel, _), members in groups.items():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                hi, lo = (a, b) if a[3] >= b[3] else (b, a)
                hi_text, lo_text = hi[1].rounds[hi[2]].critique, lo[1].rounds[lo[2]].critique
                if hi[3] - lo[3] <= min_margin or hi_text == lo_text:
                    continue
                paths, user = views.turns(hi[0], hi[1], hi[2])
                rows.append({
                    "images": [image(hi[0], p) for p in paths], "prompt": user,
                    "chosen": views.assistant(hi_text), "rejected": views.assistant(lo_text),
                    "chosen_reward": hi[3], "rejected_reward": lo[3],
                    "task_prompt": prompt, "family": hi[1].family, "run_id": hi[0].manifest.run_id,
                    "image_file": rel,
                    "chosen_from": f"{hi[0].manifest.run_id}:{hi[1].id}:{hi[2]}",
                    "rejected_from": f"{lo[0].manifest.run_id}:{lo[1].id}:{lo[2]}",
                })
    return _dataset(rows, features)


def grpo_dataset(
    stores: Stores,
    *,
    rounds: Literal["first", "all"] = "first",
    include_unfinished: bool = False,
    request: str | None = None,
) -> Dataset:
    """Prompts for GRPOTrainer: the critic request with the round-0 image of each session
    (rounds="all": every round's image). GRPO generates the critiques; the other columns
    (task_prompt, family, seed, correct, ...) reach the reward functions as keyword arguments."""
    features = Features({
        "images": List(Image()), "prompt": _MESSAGES, **_SOURCE, "seed": Value("int64"),
        "correct": Value("bool"), "session_id": Value("string"), "round": Value("int64"),
    })
    stores = _stores(stores)
    image, views, rows = _Images(), _Views(stores, request), []
    for store, s in _sessions(stores, include_unfinished):
        for r in s.rounds[:1] if rounds == "first" else s.rounds:
            rows.append({
                "images": [image(store, r.image)], "prompt": views.user_turn(store, s.prompt),
                "task_prompt": s.prompt, "family": s.family, "run_id": store.manifest.run_id,
                "seed": s.seed, "correct": r.correct, "session_id": s.id, "round": r.index,
            })
    return _dataset(rows, features)


BUILDERS = {"sft": sft_dataset, "preference": preference_dataset, "grpo": grpo_dataset}


def export(stores: Stores, kind: Literal["sft", "preference", "grpo"], out_dir: str | Path, *,
           overwrite: bool = False, **options) -> Path:
    """Build one dataset and `save_to_disk` it at `out_dir`, atomically: it is written to a temp
    folder beside `out_dir` and renamed into place, so `out_dir` is a whole dataset or absent.
    `options` go to the builder (e.g. reward_key="judge"). Load with `datasets.load_from_disk`."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {sorted(BUILDERS)}")
    out = Path(out_dir).absolute()
    if out.exists() and not overwrite:
        raise StoreError(f"{out} exists; pass overwrite=True to replace it")
    dataset = BUILDERS[kind](stores, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    old = out.parent / f".{out.name}.{secrets.token_hex(6)}.old"
    try:
        dataset.save_to_disk(str(tmp))
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists():
                os.replace(old, out)  # put the previous export back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out
