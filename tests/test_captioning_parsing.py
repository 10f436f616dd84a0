"""Prompts, reply repair and validation, and quality warnings."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trsllava_utils.captioning import (IMAGE_QUERY_PROMPT, ReplyError, parse_query_reply, parse_reply,
                                       prompt_identity, reply_warnings, rsrt_prompt, single_variant_prompt)

V1 = {"one_sentence": "A pond in a park.", "feature": "A pond lies in the north.", "caption": "Trees surround it."}
V2 = {"one_sentence": "A road by houses.", "feature": "A road runs east to west.", "caption": "Houses line it."}


def test_rsrt_prompt_asks_for_n():
    prompt = rsrt_prompt(4)
    assert "Write 4 independent descriptions" in prompt
    assert "with 4 objects in the list" in prompt


def test_rsrt_prompt_content():
    prompt = rsrt_prompt(5)
    for needle in ('"one_sentence"', '"feature"', '"caption"', "top of the image as North", "percentages",
                   "JSON only"):
        assert needle in prompt


def test_rsrt_prompt_rejects_zero():
    with pytest.raises(ValueError, match="at least 1"):
        rsrt_prompt(0)


def test_single_variant_prompt_one_object():
    assert '{"one_sentence": "...", "feature": "...", "caption": "..."}' in single_variant_prompt()


def test_image_query_prompt_one_sentence():
    assert "one plain sentence" in IMAGE_QUERY_PROMPT


def test_prompt_identity_changes():
    base = prompt_identity("p", "single", 5)
    assert base == prompt_identity("p", "single", 5)
    assert base != prompt_identity("p", "single", 4)
    assert base != prompt_identity("p", "per_variant", 5)
    assert base != prompt_identity("q", "single", 5)


def test_parse_clean_object():
    assert parse_reply(json.dumps({"variants": [V1, V2]}), 2) == [V1, V2]


def test_parse_code_fence_and_prose():
    text = "Sure, here you go:\n```json\n" + json.dumps({"variants": [V1]}) + "\n```\nLet me know!"
    assert parse_reply(text, 1) == [V1]


def test_parse_trailing_commas():
    text = '{"variants": [{"one_sentence": "a", "feature": "b", "caption": "c",},],}'
    assert parse_reply(text, 1) == [{"one_sentence": "a", "feature": "b", "caption": "c"}]


def test_parse_single_quotes():
    text = "{'variants': [{'one_sentence': 'a', 'feature': 'b', 'caption': 'c'}]}"
    assert parse_reply(text, 1) == [{"one_sentence": "a", "feature": "b", "caption": "c"}]


def test_parse_curly_quotes():
    text = "{\u201cone_sentence\u201d: \u201ca\u201d, \u201cfeature\u201d: \u201cb\u201d, \u201ccaption\u201d: \u201cc\u201d}"
    assert parse_reply(text, 1) == [{"one_sentence": "a", "feature": "b", "caption": "c"}]


def test_parse_raw_newline_in_string():
    text = '{"one_sentence": "a", "feature": "b", "caption": "line one\nline two"}'
    assert parse_reply(text, 1)[0]["caption"] == "line one line two"


def test_parse_braces_inside_strings():
    text = 'Note {draft}: {"one_sentence": "a {b} c", "feature": "b", "caption": "c"} end }'
    assert parse_reply(text, 1)[0]["one_sentence"] == "a {b} c"


def test_parse_bare_list():
    assert parse_reply(json.dumps([V1, V2]), 2) == [V1, V2]


def test_parse_single_object():
    assert parse_reply(json.dumps(V1), 1) == [V1]


def test_parse_field_aliases_and_lists():
    text = json.dumps({"Summary": "a", "Features": ["pond in the north", "road in the south"], "Description": "c"})
    assert parse_reply(text, 1) == [{"one_sentence": "a", "feature": "pond in the north; road in the south",
                                     "caption": "c"}]


def test_parse_extra_variants_cut():
    assert parse_reply(json.dumps({"variants": [V1, V2]}), 1) == [V1]


def test_parse_too_few_variants():
    with pytest.raises(ReplyError, match="1 distinct variants, expected 3"):
        parse_reply(json.dumps({"variants": [V1]}), 3)


def test_parse_duplicates_case_and_space():
    shouted = {key: "  " + value.upper() + " " for key, value in V1.items()}
    with pytest.raises(ReplyError, match="1 distinct variants after dropping 1 duplicates, expected 2"):
        parse_reply(json.dumps({"variants": [V1, shouted]}), 2)


def test_parse_empty_field():
    with pytest.raises(ReplyError, match="variant 2: field 'caption' is missing or empty"):
        parse_reply(json.dumps({"variants": [V1, {**V2, "caption": "  "}]}), 2)


def test_parse_no_json_keeps_reply():
    with pytest.raises(ReplyError) as info:
        parse_reply("I am sorry, I cannot help.", 1)
    assert info.value.reply == "I am sorry, I cannot help."


def test_parse_truncated_json():
    with pytest.raises(ReplyError, match="no JSON object"):
        parse_reply('{"variants": [{"one_sentence": "a", "feature": "b", "cap', 1)


def test_parse_any_count_when_none():
    assert len(parse_reply(json.dumps([V1, V2]), None)) == 2


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40))
def test_parse_never_crashes(text):
    try:
        parse_reply(text, 1)
    except ReplyError:
        pass


def test_query_plain_sentence():
    assert parse_query_reply("Many trees surround a pond.") == "Many trees surround a pond."


def test_query_label_and_quotes():
    assert parse_query_reply('Caption: "Many trees surround a pond."\n') == "Many trees surround a pond."


def test_query_code_fence():
    assert parse_query_reply("```\nA river runs past fields.\n```") == "A river runs past fields."


def test_query_json_object():
    assert parse_query_reply('{"caption": "A bridge over a river."}') == "A bridge over a river."


def test_query_empty_fails():
    with pytest.raises(ReplyError, match="no sentence found"):
        parse_query_reply("  \n ``` ```")


def test_warning_percentage():
    assert reply_warnings(["Water covers 40 % of the image."]) == ["contains a percentage"]


def test_warning_percent_word():
    assert reply_warnings(["about ten percent is forest"]) == ["contains a percentage"]


def test_warning_prompt_echo():
    assert reply_warnings(["Here is the JSON you asked for."]) == ["mentions the prompt ('Here is')"]


def test_warning_clean_text():
    assert reply_warnings([V1["caption"], V2["feature"]]) == []


def test_parse_prose_list_before_object():
    text = "See [1] below. " + json.dumps(V1)
    assert parse_reply(text, 1) == [V1]
