"""The LLM judge's output parser over many malformed outputs."""
from __future__ import annotations

import pytest

from rapo_ray.judge.parse import extract_tag, parse_case, parse_level, parse_score, parse_yes_no


@pytest.mark.parametrize("text,level", [
    ("<level>2</level>", 2),
    ("<LEVEL> 3 </LEVEL>", 3),
    ("Sure! My verdict:\n<Level>1</Level>\nThanks.", 1),
    ("<level>Level 2 (indirect)</level>", 2),
    ("<level>three</level>", 3),
    ("<level>III</level>", 3),
    ("<level >4</ level>", 4),
    ('<level type="int">2</level>', 2),
    ("<level>2", 2),  # unclosed
    ("<level>5</level> on reflection <level>2</level>", 2),  # the last one wins
    ("level: 3", 3),
    ("**Level**: 1", 1),
    ("<level>2.0</level>", 2),
    # unusable
    ("", None),
    ("no tags at all", None),
    ("<level></level>", None),
    ("<level>0</level>", None),
    ("<level>11</level>", None),
    ("<level>-2</level>", None),
    ("<level>2 or 3</level>", None),
    ("<level>2.5</level>", None),
    ("<level>high</level>", None),
    ("<lvl>2</lvl>", None),
])
def test_parse_level(text, level):
    assert parse_level(text) == level


@pytest.mark.parametrize("text,case", [
    ("<case>Adequate</case>", "Adequate"),
    ("<CASE>poor</CASE>", "Poor"),
    ("<case> Fair. </case>", "Fair"),
    ("<case>EXCESSIVE</case>", "Excessive"),
    ("<case>The case is: Adequate</case>", "Adequate"),
    ("<level>2</level><case>Fair", "Fair"),
    ("Case = Poor", "Poor"),
    ("<case>Adequate</case> hmm no <case>Poor</case>", "Poor"),
    # unusable
    ("<case>Fair or Poor</case>", None),
    ("<case>good</case>", None),
    ("<case>Adequately</case>", None),
    ("<case></case>", None),
    ("Adequate", None),  # no tag and no 'case:' line
    ("\x00\x01<case", None),
])
def test_parse_case(text, case):
    assert parse_case(text) == case


@pytest.mark.parametrize("text,score", [
    ("<score>+1</score>", 1),
    ("<score>1</score>", 1),
    ("<score>-1</score>", -1),
    ("<score>\u22121</score>", -1),  # unicode minus
    ("<SCORE> -1 </SCORE>", -1),
    ("<reward>+1</reward>", 1),
    ("<score>minus one</score>", -1),
    ("<score>one</score>", 1),
    ("<score>positive</score>", 1),
    ("<score>negative</score>", -1),
    ("score: -1", -1),
    ("<score>1.0</score>", 1),
    # unusable
    ("<score>0</score>", None),
    ("<score>2</score>", None),
    ("<score>1 or -1</score>", None),
    ("<score>positive, not negative</score>", None),
    ("<score>maybe</score>", None),
    ("nothing", None),
])
def test_parse_score(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("text,value", [
    ("<refused>yes</refused>", True), ("<refused>No</refused>", False), ("<REFUSED>true</REFUSED>", True),
    ("<refused>0</refused>", False), ("<refused>yes and no</refused>", None), ("<refused>?</refused>", None),
    ("", None),
])
def test_parse_yes_no(text, value):
    assert parse_yes_no(text, "refused") is value


def test_extract_tag_multiline_and_nested_text():
    out = "Reasoning...\n<case>\n  Poor\n</case>\n<level>2</level>"
    assert extract_tag(out, "case") == "Poor" and extract_tag(out, "level") == "2"
    assert extract_tag("<caseX>1</caseX>", "case") is None
