"""SCoRe-style shaping: improvement pays, right -> wrong and false 'right' cost extra."""

import pytest

from rewards.shaping import Shaping

S = Shaping(alpha=1.0, flip_penalty=1.0, false_right_penalty=1.0, threshold=0.5)


def test_fixing_pays_more_than_keeping_and_breaking_costs_most():
    fixed = S.critique_reward(0.1, "wrong", 0.9)
    kept_right = S.critique_reward(0.9, "right")
    stayed_wrong = S.critique_reward(0.1, "wrong", 0.1)
    broke = S.critique_reward(0.9, "wrong", 0.1)
    false_right = S.critique_reward(0.1, "right")
    assert fixed == pytest.approx(0.9 + 0.8) and kept_right == pytest.approx(0.9)
    assert stayed_wrong == pytest.approx(0.1)
    assert broke == pytest.approx(0.1 - 0.8 - 1.0) and false_right == pytest.approx(0.1 - 1.0)
    assert fixed > kept_right > stayed_wrong > false_right > broke


def test_the_penalties_only_apply_across_the_threshold():
    assert S.critique_reward(0.6, "wrong", 0.55) == pytest.approx(0.55 - 0.05)  # still right: no flip penalty
    assert S.critique_reward(0.5, "right") == pytest.approx(0.5)  # at the threshold counts as right
    no_bonus = Shaping(alpha=0.0, flip_penalty=0.0)
    assert no_bonus.critique_reward(0.9, "wrong", 0.1) == pytest.approx(0.1)


def test_session_rewards():
    # round 0 wrong, edit -> round 1 right, the critic says right
    assert S.session_rewards([0.0, 1.0], ["wrong", "right"]) == pytest.approx([2.0, 1.0])
    # an edit asked for at the round cap is never carried out: not judged
    assert S.session_rewards([0.0, 0.2], ["wrong", "wrong"]) == pytest.approx([0.4])
    assert S.session_rewards([0.7], [None]) == pytest.approx([-1.0])
    with pytest.raises(ValueError, match="2 scores"):
        S.session_rewards([0.0, 1.0], ["wrong"])
    with pytest.raises(ValueError, match="edit made"):
        S.critique_reward(0.3, "wrong")
