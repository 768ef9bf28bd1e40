"""Tokenizing rows (prefopt.data.tokenize): special tokens, EOS once, the common-prefix split, chat templates,
truncation sides."""

import copy

import pytest

from prefopt.data.errors import DataError
from prefopt.data.tokenize import tokenize_row
from prefopt.data.tokenizer_builder import build_bpe_tokenizer

WORDS = "one two three four five six seven eight nine ten"


@pytest.fixture(scope="module")
def tok():
    # every word of WORDS (and " hi") becomes one token: "one", "Ġtwo", ...
    return build_bpe_tokenizer([WORDS + " hi"] * 20, vocab_size=400)


def tokens(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_string_row_bos_on_prompt_eos_on_responses(tok):
    out = tokenize_row({"prompt": "one two", "chosen": " three", "rejected": " four five"}, tok, 100, 50)
    assert tokens(tok, out["prompt_ids"]) == ["<s>", "one", "Ġtwo"]
    assert tokens(tok, out["chosen_ids"]) == ["Ġthree", "</s>"]
    assert tokens(tok, out["rejected_ids"]) == ["Ġfour", "Ġfive", "</s>"]


def test_a_merge_across_the_boundary_splits_at_the_common_prefix(tok):
    # "one tw" + "o three" is "one two three": the joint tokens are one, Ġtwo, Ġthree; "Ġtw" never appears
    out = tokenize_row({"prompt": "one tw", "chosen": "o three", "rejected": "o four"}, tok, 100, 50)
    assert tokens(tok, out["prompt_ids"]) == ["<s>", "one"]
    assert tokens(tok, out["chosen_ids"]) == ["Ġtwo", "Ġthree", "</s>"]
    assert tokens(tok, out["rejected_ids"]) == ["Ġtwo", "Ġfour", "</s>"]


def test_eos_is_appended_once(tok):
    out = tokenize_row({"prompt": "one", "chosen": " two</s>", "rejected": " three"}, tok, 100, 50)
    assert tokens(tok, out["chosen_ids"]) == ["Ġtwo", "</s>"]
    assert tokens(tok, out["rejected_ids"]) == ["Ġthree", "</s>"]


def test_prompt_truncated_from_the_left_keeping_bos(tok):
    row = {"prompt": "one two three four five", "chosen": " six", "rejected": " seven"}
    out = tokenize_row(row, tok, 100, 4)  # 6 prompt tokens -> 4: BOS + the last 3
    assert tokens(tok, out["prompt_ids"]) == ["<s>", "Ġthree", "Ġfour", "Ġfive"]
    assert tokens(tok, out["chosen_ids"]) == ["Ġsix", "</s>"]


def test_responses_truncated_from_the_right(tok):
    row = {"prompt": "one two", "chosen": " six seven eight nine", "rejected": " ten"}
    out = tokenize_row(row, tok, 6, 4)  # prompt 3 tokens, so 3 left for each response
    assert tokens(tok, out["prompt_ids"]) == ["<s>", "one", "Ġtwo"]
    assert tokens(tok, out["chosen_ids"]) == ["Ġsix", "Ġseven", "Ġeight"]  # cut: no EOS
    assert tokens(tok, out["rejected_ids"]) == ["Ġten", "</s>"]


def test_response_truncated_to_nothing_drops_the_row(tok):
    row = {"prompt": "one two three four five", "chosen": " six", "rejected": " seven"}
    assert tokenize_row(row, tok, 6, 6) is None  # the 6-token prompt fills max_length
    assert tokenize_row(row, tok, 7, 6) is not None


def test_empty_prompt_becomes_bos(tok):
    out = tokenize_row({"prompt": "", "chosen": "one", "rejected": "two"}, tok, 100, 50)
    assert tokens(tok, out["prompt_ids"]) == ["<s>"]


def test_chat_row_uses_the_template_and_ends_responses_at_its_eos(tok):
    row = {"prompt": [{"role": "user", "content": "one"}], "chosen": [{"role": "assistant", "content": "one"}],
           "rejected": [{"role": "assistant", "content": "one two"}]}
    out = tokenize_row(row, tok, 100, 50)
    assert tokens(tok, out["prompt_ids"]) == ["<s>", "<|user|>", "Ċ", "one", "</s>", "Ċ", "<|assistant|>", "Ċ"]
    # the template renders "one</s>\n": the response stops at its EOS, no second EOS, no newline
    assert tokens(tok, out["chosen_ids"]) == ["one", "</s>"]
    assert tokens(tok, out["rejected_ids"]) == ["one", "Ġtwo", "</s>"]


def test_chat_template_without_eos_or_bos_gets_them_added(tok):
    t = copy.deepcopy(tok)  # keep the module's tokenizer untouched
    t.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    row = {"prompt": [{"role": "user", "content": "one"}], "chosen": [{"role": "assistant", "content": "two"}],
           "rejected": [{"role": "assistant", "content": "three"}]}
    out = tokenize_row(row, t, 100, 50)
    assert t.decode(out["prompt_ids"]) == "<s>user: one\n"  # BOS added: the tokenizer adds one to text
    assert out["prompt_ids"][0] == t.bos_token_id
    assert t.decode(out["chosen_ids"]) == "assistant: two\n</s>"


def test_chat_row_without_chat_template_is_an_error(tok):
    t = copy.deepcopy(tok)
    t.chat_template = None
    row = {"prompt": [{"role": "user", "content": "one"}], "chosen": [{"role": "assistant", "content": "two"}],
           "rejected": [{"role": "assistant", "content": "three"}]}
    with pytest.raises(DataError, match="the data has chat messages but the tokenizer .*has no chat template"):
        tokenize_row(row, t, 100, 50)


def test_pre_encoded_rows_tokenize_alike_in_three_batched_calls(tok):
    from prefopt.data.datamodule import tokenize_rows
    from prefopt.data.tokenize import PreEncoded

    words = WORDS.split()
    rows = [{"prompt": " ".join(words[i % 5: i % 5 + 3]), "chosen": " " + words[(i + 1) % 10],
             "rejected": " " + " ".join(words[(i + 2) % 10:(i + 2) % 10 + 2]) + ("</s>" if i % 3 == 0 else "")}
            for i in range(30)]
    one_by_one = [tokenize_row(r, tok, 100, 50) for r in rows]
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, text, **kwargs):
            calls.append(text)
            return tok(text, **kwargs)

    items, _ = tokenize_rows(rows, Counting(), 100, 50, "train")
    assert [{k: it[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for it in items] == one_by_one
    batched = [c for c in calls if isinstance(c, list)]
    assert len(batched) == 3 and len(calls) == 3  # prompts, prompt + response, the texts that end in "</s>"
    assert PreEncoded(tok, rows)("not seen before", add_special_tokens=False)["input_ids"] == tok(
        "not seen before", add_special_tokens=False)["input_ids"]
