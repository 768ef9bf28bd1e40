"""Row normalization (prefopt.data.rows): every accepted layout, errors that name source and row, drops."""

import pytest

from prefopt.data.errors import DataError
from prefopt.data.rows import normalize_row, normalize_rows


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def test_string_row_passes_through():
    row = {"prompt": "Q", "chosen": "yes", "rejected": "no", "extra": 1}
    assert normalize_row(row, 0, "f.jsonl") == {"prompt": "Q", "chosen": "yes", "rejected": "no"}


def test_explicit_chat_row_keeps_only_role_and_content():
    row = {"prompt": [{**user("Q"), "name": "x"}], "chosen": [bot("yes")], "rejected": [bot("no")]}
    assert normalize_row(row, 0, "f") == {"prompt": [user("Q")], "chosen": [bot("yes")], "rejected": [bot("no")]}


def test_implicit_prompt_is_the_longest_common_prefix():
    conv = [{"role": "system", "content": "S"}, user("Q1"), bot("A1"), user("Q2")]
    row = {"chosen": conv + [bot("good")], "rejected": conv + [bot("bad")]}
    assert normalize_row(row, 0, "f") == {"prompt": conv, "chosen": [bot("good")], "rejected": [bot("bad")]}


def test_ultrafeedback_layout_strips_the_shared_user_turn():
    row = {"prompt": "Q", "prompt_id": "abc", "chosen": [user("Q"), bot("good")],
           "rejected": [user("Q"), bot("bad")], "score_chosen": 8.0, "score_rejected": 3.0}
    assert normalize_row(row, 0, "f") == {"prompt": [user("Q")], "chosen": [bot("good")], "rejected": [bot("bad")]}


def test_message_prompt_repeated_in_responses_is_stripped():
    row = {"prompt": [user("Q")], "chosen": [user("Q"), bot("good")], "rejected": [user("Q"), bot("bad")]}
    assert normalize_row(row, 0, "f") == {"prompt": [user("Q")], "chosen": [bot("good")], "rejected": [bot("bad")]}


def test_mixed_rows_become_uniform():
    a = normalize_row({"prompt": "Q", "chosen": [bot("good")], "rejected": [bot("bad")]}, 0, "f")
    assert a == {"prompt": [user("Q")], "chosen": [bot("good")], "rejected": [bot("bad")]}
    b = normalize_row({"prompt": [user("Q")], "chosen": "good", "rejected": "bad"}, 0, "f")
    assert b == {"prompt": [user("Q")], "chosen": [bot("good")], "rejected": [bot("bad")]}


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"prompt": "Q", "rejected": "no"}, "missing column 'chosen'"),
        ({"chosen": "yes", "rejected": "no"}, "missing column 'prompt'"),
        ({"prompt": None, "chosen": "yes", "rejected": "no"}, "field 'prompt' is null"),
        ({"prompt": "Q", "chosen": 3, "rejected": "no"}, "'chosen' must be a string or a list of messages, got int"),
        ({"prompt": "Q", "chosen": "yes", "rejected": [bot("no")]}, "both be strings or both message lists"),
        ({"prompt": "Q", "chosen": [bot("a")], "rejected": [{"role": "assistant"}]},
         "malformed message 0 in 'rejected': no 'content' key"),
        ({"prompt": "Q", "chosen": [bot("a")], "rejected": [{"role": "assistant", "content": None}]},
         "malformed message 0 in 'rejected': 'content' must be a string, got null"),
        ({"prompt": "Q", "chosen": ["a"], "rejected": [bot("b")]}, "malformed message 0 in 'chosen'"),
        ({"chosen": [bot("a")], "rejected": [bot("b")]}, "prompt cannot be inferred"),
        ({"prompt": [], "chosen": [bot("a")], "rejected": [bot("b")]}, "empty message list"),
        ("not a row", "expected an object"),
    ],
)
def test_bad_rows_name_source_row_and_problem(row, problem):
    with pytest.raises(DataError) as err:
        normalize_row(row, 7, "data/pairs.jsonl")
    assert "data/pairs.jsonl, row 8: " in str(err.value)  # index 7 is the eighth row
    assert problem in str(err.value)


def test_identical_and_empty_responses_are_dropped_and_counted():
    raw = [
        {"prompt": "Q", "chosen": "a", "rejected": "b"},
        {"prompt": "Q", "chosen": "same", "rejected": "same"},
        {"prompt": "Q", "chosen": "  ", "rejected": "b"},
        {"chosen": [user("Q"), bot("x")], "rejected": [user("Q"), bot("x")]},
        {"chosen": [user("Q"), bot("x")], "rejected": [user("Q"), bot("")]},
        {"chosen": [bot("x")], "rejected": [bot("x")]},  # identical, even with nothing to call a prompt
    ]
    rows, drops = normalize_rows(raw[:3], "f")
    assert rows == [{"prompt": "Q", "chosen": "a", "rejected": "b"}]
    assert drops == {"identical_responses": 1, "empty_response": 1}
    rows, drops = normalize_rows(raw[3:], "f")  # chat rows: one format per data set
    assert rows == []
    assert drops == {"identical_responses": 2, "empty_response": 1}


def test_normalize_rows_reports_the_index_of_the_bad_row():
    raw = [{"prompt": "Q", "chosen": "a", "rejected": "b"}] * 3 + [{"prompt": "Q", "chosen": "a"}]
    with pytest.raises(DataError, match=r"^f\.jsonl, row 4: missing column 'rejected'"):
        normalize_rows(raw, "f.jsonl")


def test_mixed_formats_across_rows_are_an_error():
    raw = [{"prompt": "Q", "chosen": "a", "rejected": "b"}, {"prompt": "Q", "chosen": "c", "rejected": "d"},
           {"prompt": [user("Q")], "chosen": [bot("a")], "rejected": [bot("b")]}]
    with pytest.raises(DataError, match=r"^f\.jsonl, row 3: chat messages, but row 1 is plain strings"):
        normalize_rows(raw, "f.jsonl")


def test_strict_turns_a_drop_into_an_error_naming_the_row():
    raw = [{"prompt": "Q", "chosen": "a", "rejected": "b"}, {"prompt": "Q", "chosen": "same", "rejected": "same"}]
    with pytest.raises(DataError, match=r"^f\.jsonl, row 2: identical responses \(data.strict=true"):
        normalize_rows(raw, "f.jsonl", strict=True)
