import pytest
from pydantic import ValidationError

from policies.stop import StopPolicy


@pytest.mark.parametrize("policy,args,reason", [
    (StopPolicy(), (0, "right", []), "critic_satisfied"),
    (StopPolicy(), (0, "wrong", [], None, "add a circle"), None),
    (StopPolicy(max_rounds=0), (0, "wrong", [], None, "add a circle"), "max_rounds"),
    (StopPolicy(max_rounds=2), (2, "wrong", [], None, "add a circle"), "max_rounds"),
    (StopPolicy(), (1, None, [], "no 'verdict:' line"), "critique_unreadable"),
    (StopPolicy(score_threshold=0.9), (0, "wrong", [0.95], None, "add a circle"), "score_threshold"),
    (StopPolicy(patience=2), (3, "wrong", [0.5, 0.4, 0.3, 0.45], None, "add a circle"), "no_improvement"),
    (StopPolicy(patience=2), (3, "wrong", [0.5, 0.4, 0.6, 0.45], None, "add a circle"), None),
    (StopPolicy(stop_when_right=False, score_threshold=0.9), (0, "right", [0.5], None, None), "no_edit"),
])
def test_decide(policy, args, reason):
    assert policy.decide(*args) == reason


def test_bad_settings_are_refused():
    with pytest.raises(ValidationError):
        StopPolicy(max_rounds=-1)
    with pytest.raises(ValidationError):
        StopPolicy(maxrounds=3)
    assert StopPolicy(max_rounds=4).recursion_limit == 14
