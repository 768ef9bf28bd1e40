"""Long chat prompts keep their structure (prefopt.data.tokenize.fit_chat_prompt): contents are cut,
earliest message first, and the conversation rendered again; role headers are never cut; a prompt
whose headers alone are too long is dropped and counted as `prompt too long`."""

import sys

import pytest
from transformers import AutoTokenizer

from prefopt.data.datamodule import tokenize_rows
from prefopt.data.errors import DataError
from prefopt.data.tokenize import PromptTooLong, fit_chat_prompt, tokenize_row
from prefopt.data.tokenizer_builder import build_bpe_tokenizer

from mistral_assets import mistral_tokenizer_dir  # noqa: E402

WORDS = "one two three four five six seven eight nine ten"


@pytest.fixture(scope="module")
def tok():
    # every word of WORDS becomes one token ("one", "Ġtwo", ...); <|system|>, <|user|>, <|assistant|> are single tokens
    return build_bpe_tokenizer([WORDS + " hi"] * 20, vocab_size=400)


def msg(role, content):
    return {"role": role, "content": content}


def row(prompt, chosen="one", rejected="one two"):
    return {"prompt": prompt, "chosen": [msg("assistant", chosen)], "rejected": [msg("assistant", rejected)]}


def tokens(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_a_long_message_is_cut_from_its_start_inside_the_template(tok):
    r = row([msg("user", "one two three four five")])
    assert len(tokenize_row(r, tok, 100, None)["prompt_ids"]) == 12
    out = tokenize_row(r, tok, 100, 9)  # 3 tokens over: the content loses "one two three"
    assert tokens(tok, out["prompt_ids"]) == ["<s>", "<|user|>", "Ċ", "Ġfour", "Ġfive", "</s>", "Ċ", "<|assistant|>", "Ċ"]
    assert tokens(tok, out["chosen_ids"]) == ["one", "</s>"]


def test_the_earliest_message_is_emptied_before_the_next_is_cut(tok):
    r = row([msg("system", "one two three"), msg("user", "one four")])  # 16 prompt tokens
    assert len(tokenize_row(r, tok, 100, None)["prompt_ids"]) == 16
    out = tokenize_row(r, tok, 100, 14)
    assert tokens(tok, out["prompt_ids"])[:6] == ["<s>", "<|system|>", "Ċ", "Ġthree", "</s>", "Ċ"]
    out = tokenize_row(r, tok, 100, 12)  # the system content (3 tokens) goes, then the user's "one"
    assert tokens(tok, out["prompt_ids"]) == ["<s>", "<|system|>", "Ċ", "</s>", "Ċ", "<|user|>", "Ċ", "Ġfour", "</s>", "Ċ",
                                              "<|assistant|>", "Ċ"]


def test_headers_alone_too_long_drop_the_row_and_are_counted(tok, capsys):
    from prefopt.run.steps import print_data_summary

    headers_only = row([msg("system", "one"), msg("user", "two")])  # 11 tokens with both contents empty
    rows = [headers_only, row([msg("user", "one two three")]), row([msg("user", "one")])]
    with pytest.raises(PromptTooLong, match=r"2 role header\(s\) alone take more than max_prompt_length=8"):
        fit_chat_prompt(tok, headers_only["prompt"], 8)
    assert tokenize_row(headers_only, tok, 100, 8) is None
    items, stats = tokenize_rows(rows, tok, 100, 8, "train")
    assert [it["row"] for it in items] == [1, 2]
    assert stats["train/dropped_prompt_too_long"] == 1 and stats["train/dropped_truncated"] == 0
    assert stats["train/truncated_prompts"] == 1  # row 1: "one two" cut from its message
    print_data_summary(None, stats)
    assert "dropped: prompt too long 1" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"train row 1: the chat prompt's 2 role header\(s\) .*data.strict=true"):
        tokenize_rows(rows, tok, 100, 8, "train", strict=True)


def test_mistral_headers_stay_whole_at_every_length(tmp_path):
    mistral = AutoTokenizer.from_pretrained(mistral_tokenizer_dir(tmp_path))
    prompt = [msg("system", "Answer in one word, please. 🙂🙂"), msg("user", "Name a fruit."),
              msg("assistant", "Apple."), msg("user", "Another one, ünïcödé allowed?")]
    r = row(prompt, "Pear.", "No.")
    full = len(tokenize_row(r, mistral, 1000, None)["prompt_ids"])
    minimum = len(tokenize_row({**r, "prompt": [msg(m["role"], "") for m in prompt]}, mistral, 1000, None)["prompt_ids"])
    for limit in range(minimum, full + 1):
        fitted, cut = fit_chat_prompt(mistral, prompt, limit)
        assert cut == (limit < full) and [m["role"] for m in fitted] == [m["role"] for m in prompt]
        assert all("\ufffd" not in m["content"] for m in fitted)  # no half characters from byte tokens
        out = tokenize_row(r, mistral, 1000, limit)
        assert len(out["prompt_ids"]) <= limit
        text = mistral.apply_chat_template(fitted + r["chosen"], tokenize=False)
        assert text.count("<|system|>\n") == 1 and text.count("<|user|>\n") == 2 and text.count("<|assistant|>\n") == 2
        joint = mistral(text[: text.rindex("</s>") + 4])["input_ids"]  # the re-rendered conversation, jointly
        assert out["prompt_ids"] + out["chosen_ids"] == joint
        kept = [m["content"] for m in fitted]  # each content is the end of the original, the earliest cut first
        assert all(o.endswith(k.strip()) for o, k in zip((m["content"] for m in prompt), kept))
        emptied = [k == "" for k in kept]
        assert emptied == sorted(emptied, reverse=True)
    with pytest.raises(PromptTooLong):
        fit_chat_prompt(mistral, prompt, minimum - 1)
