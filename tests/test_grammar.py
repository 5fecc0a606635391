import pytest
from hypothesis import given
from hypothesis import strategies as st

from world import Group, Prompt, PromptError, parse_prompt
from world.spec import COLOR_NAMES, RELATIONS, SHAPES

groups = st.builds(
    Group,
    count=st.integers(1, 4),
    color=st.one_of(st.none(), st.sampled_from(COLOR_NAMES)),
    shape=st.sampled_from(SHAPES),
)


@st.composite
def prompts(draw):
    if draw(st.booleans()):
        a, b = draw(groups), draw(groups)
        if a.count + b.count > 6:
            b = b.model_copy(update={"count": 6 - a.count})
        return Prompt(groups=(a, b), relation=draw(st.sampled_from(RELATIONS)))
    gs = draw(st.lists(groups, min_size=1, max_size=3))
    while sum(g.count for g in gs) > 6:
        gs.pop()
    return Prompt(groups=tuple(gs))


@given(prompts())
def test_ast_text_ast_round_trip(prompt):
    assert parse_prompt(prompt.text) == prompt


@given(prompts())
def test_text_is_canonical(prompt):
    text = prompt.text
    assert parse_prompt(text).text == text
    assert parse_prompt("  " + text.upper() + ". ").text == text  # case, spaces, final full stop


@pytest.mark.parametrize("text,family", [
    ("a circle", "single_object"),
    ("a circle and a square", "two_object"),
    ("three triangles", "counting"),
    ("a red circle", "colors"),
    ("an orange triangle", "colors"),
    ("a circle to the left of a square", "position"),
    ("a red square and a blue circle", "color_attr"),
    ("two red circles above a blue square", "complex"),
    ("a red circle and two squares", "complex"),
    ("two red circles", "complex"),
    ("a red circle and a blue circle", "complex"),
])
def test_families(text, family):
    assert parse_prompt(text).family == family


def test_number_words():
    assert parse_prompt("one circle") == parse_prompt("a circle")
    assert parse_prompt("four squares").groups[0].count == 4


@pytest.mark.parametrize("text,word", [
    ("a hexagon", "'hexagon'"),
    ("two circle", "'circle'"),
    ("a circles", "'circles'"),
    ("five circles", "'five'"),
    ("a circle beside a square", "'beside'"),
    ("a circle above a square and a triangle", "'and'"),
    ("a red blue circle", "'blue'"),
])
def test_errors_name_the_word(text, word):
    with pytest.raises(PromptError, match=word):
        parse_prompt(text)


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("a red", "ends too early"),
    ("four circles above three squares", "at most 6"),
])
def test_other_errors(text, message):
    with pytest.raises(PromptError, match=message):
        parse_prompt(text)
