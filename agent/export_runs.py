"""What an export reads from a run besides its rounds: the words its critic was asked in, what
else it saw (the earlier rounds of a run with `history: K`), and which reward says how good a
round's image is.

A run's manifest keeps its config, so the export can put the critic's own request in the
prompt (the config's `models.critic.template`, else the run's task's `critic_template`, which
is what the loop fills in for a critic that leaves it out) instead of a stand-in. A run with
`history: K` > 0 showed its critic a conversation (model/backends/chat.py): the K earlier images
of the session with the reflections written on them, then the current image; `CriticView` gives a
row that same conversation, as content parts with one image placeholder in each user turn (TRL's
`prepare_multimodal_messages` fills them in order from the row's `images`).

The reward: ShapeWorld runs have the exact verifier's `verifier` reward; open-task runs have
none, only the judge's score (`judge`, P("yes") from a VLM), when a judge was configured.
Left out, the export takes `verifier` when every run has it, else `judge` when every run has
it, else no reward (SFT and GRPO rows do without; preference pairs refuse). A key named
explicitly that a run lacks is refused, naming the keys that run has.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.errors import UsageError
from agent.store import RunStore
from agent.trajectory import SessionRecord

PREFERRED = ("verifier", "judge")  # exact first, then the judge's score


def critic_request(store: RunStore) -> str:
    """The message the run's critic got beside the image ({prompt} in it is the session's prompt)."""
    config = store.manifest.config or {}
    critic = (config.get("models") or {}).get("critic") or {}
    if critic.get("template"):
        return critic["template"]
    from tasks import load_task

    try:
        return load_task(config.get("task", "shapeworld")).critic_template
    except ValueError as e:
        raise UsageError(f"run {store.root}: {e}; pass the critic's words with --request") from None


def history_of(store: RunStore) -> int:
    """How many earlier rounds the run's critic saw beside each image (the config's `history`)."""
    return int((store.manifest.config or {}).get("history") or 0)


class CriticView:
    """What a run's critic saw when it wrote round k's reflection, as a row's images and user side
    of the conversation: `request` (else the critic's own words) beside the first image, the
    critic's `followup` beside each later one, its earlier reflections as assistant turns."""

    def __init__(self, store: RunStore, request: str | None = None):
        from model.backends.chat import FOLLOWUP

        config = store.manifest.config or {}
        self.ask = request if request is not None else critic_request(store)
        self.again = ((config.get("models") or {}).get("critic") or {}).get("followup") or FOLLOWUP
        self.history = history_of(store)

    def turns(self, session: SessionRecord, k: int, parts: bool) -> tuple[list[str], list[dict]]:
        """(image paths, oldest first and round k's last; the messages before the critique). Without
        history: round k's image and one user turn, plain text when not `parts`."""
        ask, again = (text.replace("{prompt}", session.prompt) for text in (self.ask, self.again))
        if not parts:
            return [session.rounds[k].image], [{"role": "user", "content": ask}]
        earlier = session.rounds[max(0, k - self.history):k]
        messages = []
        for j, r in enumerate(earlier):
            messages += [user_parts(ask if j == 0 else again), assistant_parts(r.critique or "")]
        return [r.image for r in (*earlier, session.rounds[k])], [*messages, user_parts(again if earlier else ask)]


def user_parts(text: str) -> dict:
    return {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": text}]}


def assistant_parts(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def reward_keys(store: RunStore) -> set[str] | None:
    """The reward names that a round of the run carries (None: the run has no rounds)."""
    keys, rounds = set(), 0
    for session in store.sessions():
        for r in session.rounds:
            keys |= set(r.rewards)
            rounds += 1
    return keys if rounds else None


def pick_reward_key(stores: Sequence[RunStore], asked: str | None, needed: bool) -> str | None:
    """`asked` when every run with rounds has it; left out, the first of PREFERRED they all have.
    UsageError (one line) when an asked key is missing, or when `needed` and none is shared."""
    present = {store.root: keys for store in stores if (keys := reward_keys(store)) is not None}
    if asked is not None:
        for root, keys in present.items():
            if asked not in keys:
                has = ", ".join(sorted(keys)) or "none"
                raise UsageError(f"run {root} has no {asked!r} reward (its rewards: {has}); "
                                 f"pick one of those with --reward-key")
        return asked
    for key in PREFERRED:
        if present and all(key in keys for keys in present.values()):
            return key
    if needed and present:
        found = "; ".join(f"{root}: {', '.join(sorted(k)) or 'none'}" for root, k in present.items())
        raise UsageError(f"preference pairs need a reward every run has, and these runs share no verifier or "
                         f"judge reward ({found}); name one with --reward-key, or run with search.judge: model")
    return None
