"""eval.generate_prompts_file (prefopt/eval/prompts_file.py): a hand-made 3-record file in AlpacaEval's
format (alpaca_eval.json's fields) is read in order, JSONL too; bad files are one line naming the setting
and the record, before training; each instruction is encoded as a one-message chat row is in training;
and end to end, `eval.generate=true eval.generate_prompts_file=FILE` answers exactly those instructions
into generations.json with AlpacaEval's fields."""

import json

import pytest

from prefopt.errors import ConfigError
from prefopt.eval.prompts_file import instruction_rows, prompts_file_problems, read_prompts_file

ALPACA = [  # three records as alpaca_eval.json has them (reference outputs by gpt4_1106_preview)
    {"dataset": "helpful_base", "instruction": "What are the names of some famous actors that started their "
     "careers on Broadway?", "output": "Several famous actors ...", "generator": "gpt4_1106_preview"},
    {"dataset": "oasst", "instruction": "How do I wrap a present neatly?", "output": "Wrapping ...",
     "generator": "gpt4_1106_preview"},
    {"dataset": "selfinstruct", "instruction": "Write a haiku about rain.\n\nKeep it short.", "output": "Rain.",
     "generator": "gpt4_1106_preview"},
]


@pytest.fixture
def alpaca_file(tmp_path):
    path = tmp_path / "alpaca_eval.json"
    path.write_text(json.dumps(ALPACA, indent=2))
    return path


def test_an_alpaca_eval_file_is_read_in_order(alpaca_file, tmp_path):
    rows = read_prompts_file(alpaca_file)
    assert rows == [{"instruction": r["instruction"], "dataset": r["dataset"]} for r in ALPACA]
    lines = tmp_path / "mine.jsonl"
    lines.write_text(json.dumps({"instruction": "Say hi."}) + "\n\n" + json.dumps({"instruction": "Bye?"}) + "\n")
    assert read_prompts_file(lines) == [{"instruction": "Say hi.", "dataset": "mine"},
                                        {"instruction": "Bye?", "dataset": "mine"}]  # no dataset: the file's stem
    assert prompts_file_problems(str(alpaca_file)) == [] and prompts_file_problems(None) == []


def test_bad_files_are_one_line_naming_the_setting_and_record(tmp_path):
    missing = tmp_path / "nope.json"
    assert prompts_file_problems(str(missing)) == [
        f"eval.generate_prompts_file={missing} does not exist: give a JSON list (AlpacaEval's alpaca_eval.json) "
        "or JSONL file of records with an 'instruction'"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([ALPACA[0], {"prompt": "no instruction here"}]))
    with pytest.raises(ConfigError, match=r"^eval.generate_prompts_file=.*bad.json record 1: no 'instruction' string"):
        read_prompts_file(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "ok"}\n{"instruction": \n')
    assert prompts_file_problems(str(broken))[0].startswith(f"eval.generate_prompts_file={broken} line 2 is not JSON")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert prompts_file_problems(str(empty)) == [f"eval.generate_prompts_file={empty} holds no records"]


def test_an_instruction_is_encoded_as_a_one_message_chat_row(alpaca_file):
    from prefopt.data.tokenize import encode_row
    from test_judge import TEXTS
    from prefopt.data.tokenizer_builder import build_bpe_tokenizer

    tok = build_bpe_tokenizer(TEXTS * 4, vocab_size=300)
    rows = instruction_rows(read_prompts_file(alpaca_file), tok)
    assert rows[2]["prompt"] == [{"role": "user", "content": ALPACA[2]["instruction"]}]
    ids = encode_row(rows[2], tok).prompt
    rendered = tok.apply_chat_template(rows[2]["prompt"], tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == rendered  # the prompt as training formats chat rows, ending at the assistant header
    tok.chat_template = None
    assert instruction_rows(read_prompts_file(alpaca_file), tok)[0]["prompt"] == ALPACA[0]["instruction"]


def test_a_config_with_a_bad_file_fails_before_training(tmp_path):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from prefopt.config.validate import config_problems

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=sort", f"eval.generate_prompts_file={tmp_path / 'x.json'}"])
    assert [p for p in config_problems(cfg) if "generate_prompts_file" in p] == [
        f"eval.generate_prompts_file={tmp_path / 'x.json'} does not exist: give a JSON list (AlpacaEval's "
        "alpaca_eval.json) or JSONL file of records with an 'instruction'"]


@pytest.mark.slow
def test_a_run_answers_exactly_the_files_instructions(alpaca_file, cache_root, tmp_path):
    from test_judge_run import chat_pairs
    from test_run import run_cli

    pairs = chat_pairs(tmp_path / "chat.jsonl")
    proc = run_cli(["data=jsonl", f"data.path={pairs}", "data.source.eval_fraction=0.25", "model.vocab_size=300",
                    "loss=dpo", "trainer.max_steps=2", "data.batch_size=4", "logger=none", "checkpoint.enabled=false",
                    "eval.generate=true", f"eval.generate_prompts_file={alpaca_file}", "eval.generate_max_prompts=1",
                    "eval.generate_max_new_tokens=6", f"hydra.run.dir={tmp_path / 'run'}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "run" / "generations.json").read_text())
    assert [(r["instruction"], r["dataset"]) for r in out] == [(r["instruction"], r["dataset"]) for r in ALPACA]
    assert all(set(r) == {"instruction", "output", "generator", "dataset"} for r in out)  # all 3 (max_prompts=1)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["generator"] for r in out} == {results["info"]["generations"]["generator"]}
    assert results["info"]["generations"]["n"] == 3
