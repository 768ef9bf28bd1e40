"""The judge component (prefopt/eval/judge.py, prefopt/eval/judges/reward_model.py) and the judged
evaluation (prefopt/eval/judged.py): a tiny random reward model built here scores like a direct forward
pass, batched or not; bad judge settings fail in one line naming the setting; a score that is not a number
names its prompt; the judged metrics, judgements.jsonl and the start side's cache."""

import json
import math
from pathlib import Path

import pytest
import torch

from prefopt.data.tokenizer_builder import build_bpe_tokenizer
from prefopt.eval.judge import JudgeError, JudgeScores, Judge, NoJudge, OracleJudge, score_share, scored
from prefopt.eval.judges.reward_model import RewardModelJudge

TEXTS = ["What is two plus two?", "The answer is four.", "Tell me a story about a cat.", "Once upon a time",
         "a cat sat on a mat and looked at the sky", "no", "yes it is", "Sort 3 1 2 please"]
PROMPTS = ["What is two plus two?", [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Tell me a story about a cat."}], "Sort 3 1 2"]
RESPONSES = ["The answer is four.", "Once upon a time a cat sat on a mat and looked at the sky.", "1 2 3"]


def reward_model_folder(folder, num_labels=1, pad_token_id=0, chat_template=True, seed=0, causal=False):
    """A tiny random Llama reward model (or causal LM) with a small BPE tokenizer, saved as a HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tok = build_bpe_tokenizer(TEXTS * 4, vocab_size=300)
    if not chat_template:
        tok.chat_template = None
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         num_labels=num_labels, pad_token_id=pad_token_id, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = (LlamaForCausalLM if causal else LlamaForSequenceClassification)(config).eval()
    if not causal:
        torch.nn.init.normal_(model.score.weight, std=1.0)  # rewards of order 1, different per input
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return reward_model_folder(tmp_path_factory.mktemp("rm") / "rm")


def direct_reward(folder, prompt, response, index=0):
    """The reward of one conversation by hand: the chat template rendered, tokenized as
    apply_chat_template(tokenize=True) does, one forward pass of batch 1."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    conv = messages + [{"role": "assistant", "content": response}]
    ids = tok.apply_chat_template(conv, tokenize=True)["input_ids"]
    assert ids == tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, index])


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_reward_model_scores_a_batch_as_one_forward_pass_each(rm_dir, batch_size):
    judge = RewardModelJudge(str(rm_dir), batch_size=batch_size)
    judge.check()
    judge.check_prompts(PROMPTS)
    out = judge.score(PROMPTS, RESPONSES)
    expected = [direct_reward(rm_dir, p, r) for p, r in zip(PROMPTS, RESPONSES)]
    assert out.rewards == pytest.approx(expected, abs=1e-5) and out.truncated == 0
    assert len(set(round(r, 4) for r in out.rewards)) == 3  # the inputs are told apart
    judge.close()
    assert judge.score(PROMPTS[:1], RESPONSES[:1]).rewards == pytest.approx(expected[:1], abs=1e-5)  # reloads


def test_a_model_without_a_pad_token_reads_each_row_at_its_last_token(tmp_path):
    folder = reward_model_folder(tmp_path / "rm", pad_token_id=None, seed=1)
    out = RewardModelJudge(str(folder), batch_size=3).score(PROMPTS, RESPONSES)
    assert out.rewards == pytest.approx([direct_reward(folder, p, r) for p, r in zip(PROMPTS, RESPONSES)], abs=1e-5)


def test_output_index_picks_one_of_several_outputs(tmp_path):
    folder = reward_model_folder(tmp_path / "rm3", num_labels=3, seed=2)
    out = RewardModelJudge(str(folder), output_index=2, batch_size=2).score(PROMPTS, RESPONSES)
    assert out.rewards == pytest.approx([direct_reward(folder, p, r, 2) for p, r in zip(PROMPTS, RESPONSES)], abs=1e-5)


def test_long_inputs_keep_their_first_max_length_tokens_and_are_counted(rm_dir):
    from transformers import AutoModelForSequenceClassification

    judge = RewardModelJudge(str(rm_dir), max_length=12)
    ids = [judge.encode(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    out = judge.score(PROMPTS, RESPONSES)
    assert out.truncated == sum(len(i) > 12 for i in ids) == 3
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    with torch.no_grad():
        cut = [float(model(input_ids=torch.tensor([i[:12]])).logits[0, 0]) for i in ids]
    assert out.rewards == pytest.approx(cut, abs=1e-5)


def test_a_tokenizer_without_chat_template_scores_string_prompts_as_text_pairs(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = reward_model_folder(tmp_path / "plain", chat_template=False, seed=3)
    judge = RewardModelJudge(str(folder))
    out = judge.score(["What is two plus two?"], ["four"])
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder)
    ids = tok("What is two plus two?", "four")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 2  # the tokenizer's own pair form
    with torch.no_grad():
        assert out.rewards[0] == pytest.approx(float(model(input_ids=torch.tensor([ids])).logits[0, 0]), abs=1e-5)
    with pytest.raises(JudgeError, match=r"^the tokenizer of judge.path=.* has no chat template") as err:
        judge.check_prompts([PROMPTS[1]])  # chat rows: a one-line error before training
    assert "\n" not in str(err.value)


def one_line(err):
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_judge_paths_fail_in_one_line_naming_the_setting(tmp_path, rm_dir):
    with pytest.raises(JudgeError) as err:
        RewardModelJudge(str(tmp_path / "nowhere")).check()
    assert one_line(err).startswith(f"judge.path={tmp_path / 'nowhere'} does not exist (no such folder)")
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(JudgeError, match="is a file, not a model folder"):
        RewardModelJudge(str(tmp_path / "file.bin")).check()
    causal = reward_model_folder(tmp_path / "lm", causal=True)
    with pytest.raises(JudgeError) as err:
        RewardModelJudge(str(causal)).check()
    assert "holds a LlamaForCausalLM, not a sequence-classification reward model" in one_line(err)
    several = reward_model_folder(tmp_path / "rm3", num_labels=3)
    with pytest.raises(JudgeError) as err:
        RewardModelJudge(str(several)).check()
    assert one_line(err) == (f"judge.path={several} has 3 outputs (config.json num_labels): set judge.output_index "
                             "to the one that is the reward (0 to 2)")
    with pytest.raises(JudgeError) as err:
        RewardModelJudge(str(several), output_index=3).check()
    assert one_line(err).startswith("judge.output_index=3 is not an output of judge.path=")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JudgeError, match=r"^judge.path=.*empty is not a Hugging Face model folder"):
        RewardModelJudge(str(tmp_path / "empty")).check()
    with pytest.raises(ValueError, match="path is not set: judge.path=FOLDER"):
        RewardModelJudge(None)


def test_a_folder_without_a_tokenizer_fails_before_training(tmp_path, rm_dir):
    import shutil

    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(rm_dir / name, folder / name)
    with pytest.raises(JudgeError) as err:
        RewardModelJudge(str(folder)).check()
    assert one_line(err).startswith(f"judge.path={folder} holds no tokenizer that loads")


def test_a_chat_template_that_refuses_a_role_is_one_line(tmp_path, rm_dir):
    import shutil

    folder = tmp_path / "strict"
    shutil.copytree(rm_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception("
                               "'no system role') }}{% endif %}{{ m['content'] }}{% endfor %}")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    judge = RewardModelJudge(str(folder))
    judge.check_prompts(["a string prompt is fine"])
    with pytest.raises(JudgeError) as err:
        judge.check_prompts([PROMPTS[1]])
    assert one_line(err) == f"the chat template of judge.path={folder} cannot format the data's prompts: no system role"


def test_a_score_that_is_not_a_number_names_the_prompt(tmp_path):
    folder = reward_model_folder(tmp_path / "nan")
    judge = RewardModelJudge(str(folder))
    judge.model().score.weight.data.fill_(float("nan"))
    with pytest.raises(JudgeError) as err:
        scored(judge, PROMPTS, RESPONSES, "the policy's")
    assert one_line(err).startswith("judge=reward_model judge.path=")
    assert "scored the policy's answer to the prompt 'What is two plus two?' nan, not a number" in str(err.value)


class Lengthy(Judge):
    """A judge that likes long answers: the score is the response's length."""

    name = "lengthy"

    def score(self, prompts, responses):
        return JudgeScores([float(len(r)) for r in responses], truncated=sum(len(r) > 4 for r in responses))


def test_each_rank_scores_its_contiguous_share_and_the_shares_come_back_in_order():
    prompts, responses = [f"p{i}" for i in range(5)], ["a" * i for i in range(5)]
    whole = score_share(Lengthy(), prompts, responses, "the policy's")
    shares = [score_share(Lengthy(), prompts, responses, "the policy's", rank=r, world=2, gather=lambda x: [x])
              for r in (0, 1)]
    assert [s.rewards for s in shares] == [[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 3.0, 4.0]]  # own share only
    gathered = []
    for mine in ([0, 1], [2, 3, 4]):  # all_gather_object by hand: every rank sees every share (5 // 2 = 2 first)
        gathered.append((mine, JudgeScores([float(len(responses[i])) for i in mine], 0)))
    merged = score_share(Lengthy(), prompts, responses, "the policy's", rank=0, world=2, gather=lambda x: gathered)
    assert merged.rewards == whole.rewards == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_which_judges_score_a_run(rm_dir):
    def oracle(prompts, responses):
        return [1.0 if r == "ok" else 0.0 for r in responses]

    default = OracleJudge().judges(oracle)
    assert default.extra is None and default.oracle.rewards(["x", "y"], ["ok", "no"]) == [1.0, 0.0]
    assert OracleJudge().judges(None) == NoJudge().judges(oracle) == type(default)()  # nothing scores
    reward_model = RewardModelJudge(str(rm_dir))
    both = reward_model.judges(oracle)  # a second, independent judge beside the task's oracle
    assert both.extra is reward_model and both.oracle.rewards(["x"], ["ok"]) == [1.0]
    assert reward_model.judges(None).oracle is None
    with pytest.raises(JudgeError, match="judge=oracle: this data has no oracle"):
        OracleJudge().score(["x"], ["y"])


def test_judged_metrics_by_hand():
    from prefopt.eval.judged import judged_metrics

    m = judged_metrics([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 1.0, 1.0], [4, 6, 2, 8], [4, 4, 4, 4], kl=0.25, truncated=3)
    assert m["eval/judge_reward"] == 1.625 and m["eval/judge_reward_start"] == 1.0
    assert m["eval/judge_win_rate"] == (1 + 0.5 + 0 + 1) / 4
    assert m["eval/length"] == 5.0 and m["eval/length_start"] == 4.0
    assert m["eval/kl"] == 0.25 and m["eval/judge_truncated"] == 3.0
    assert 0.0 < m["eval/judge_lc_win_rate"] < 1.0


@pytest.fixture(scope="module")
def sort_models():
    from prefopt.models.load import build_tiny
    from prefopt.tasks.sort import build_sort_tokenizer

    tok = build_sort_tokenizer()
    make = [build_tiny(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=64, seed=s) for s in (0, 1)]
    return tok, make


def test_judged_evaluation_scores_the_oracle_evaluations_answers(sort_models, tmp_path):
    """A second judge scores exactly the answers the oracle evaluation sampled (same eval/length and KL),
    writes judgements.jsonl, and its start side is cached by the judge's fingerprint."""
    from prefopt.eval.cache import cached_judged_start
    from prefopt.eval.evaluate import evaluate_answers
    from prefopt.eval.judged import judge_answers, judged_start, write_judgements
    from prefopt.tasks.sort_oracle import SortOracle

    tok, (policy, start) = sort_models
    prompts = ["31>", "5124>", "97>", "8803>"]
    sampling = dict(max_new_tokens=6, temperature=1.0, seed=3, batch_size=2)
    oracle_metrics, _, answers = evaluate_answers(policy, start, tok, prompts, SortOracle(), **sampling)
    judge = Lengthy()
    side = judged_start(judge, start, tok, answers, **sampling)
    assert side["ids"] == answers.start_ids and side["rewards"] == [float(len(t)) for t in answers.start_texts]
    metrics, records = judge_answers(judge, answers, side)
    assert metrics["eval/length"] == oracle_metrics["eval/length"] and metrics["eval/kl"] == oracle_metrics["eval/kl"]
    assert metrics["eval/judge_reward"] == sum(len(t) for t in answers.texts) / 4
    write_judgements(tmp_path / "judgements.jsonl", records)
    lines = [json.loads(x) for x in (tmp_path / "judgements.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in lines] == prompts and set(lines[0]) == {
        "prompt", "response", "response_start", "score", "score_start", "length", "length_start"}
    assert [r["score"] for r in lines] == [float(len(t)) for t in answers.texts]
    assert [r["length_start"] for r in lines] == [len(i) - (i[-1:] == [tok.eos_token_id]) for i in answers.start_ids]
    sampled = answers.start_ids
    answers.start_ids = answers.start_texts = None  # data with no oracle: the start's answers are sampled here
    assert judged_start(judge, start, tok, answers, **sampling)["ids"] == sampled  # the same seed, the same answers
    calls = []

    def compute():
        calls.append(1)
        return side

    args = (tmp_path / "cache", start, tok, prompts, answers.prompt_ids)
    assert cached_judged_start(*args, "judge-a", {"task": "sort"}, compute, **sampling) == (side, "built")
    assert cached_judged_start(*args, "judge-a", {"task": "sort"}, compute, **sampling) == (side, "hit")
    assert cached_judged_start(*args, "judge-b", {"task": "sort"}, compute, **sampling)[1] == "built"
    assert len(calls) == 2


def test_file_rows_give_distinct_prompts_encoded_as_in_training(rm_dir):
    from prefopt.data.tokenize import encode_row
    from prefopt.eval.judged import row_prompts
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dir)
    chat = [{"role": "user", "content": "Tell me a story about a cat."}]
    rows = [{"prompt": chat, "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}]}] * 2
    rows += [{"prompt": "What is two plus two?", "chosen": " four", "rejected": " five"}]
    prompts, ids = row_prompts(rows, tok, max_prompts=8, max_prompt_length=64)
    assert prompts == [chat, "What is two plus two?"]
    assert ids[0] == encode_row(rows[0], tok).prompt and tok.decode(ids[0]).endswith("<|assistant|>\n")
    _, cut = row_prompts(rows[2:], tok, max_prompts=8, max_prompt_length=3)
    assert cut[0][0] == tok.bos_token_id and len(cut[0]) == 3
    assert row_prompts(rows, tok, max_prompts=1, max_prompt_length=64)[0] == [chat]


def test_the_judge_group_composes_and_checks_its_keys(rm_dir):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from prefopt.config.components import ConfigError
    from prefopt.config.validate import config_problems
    from prefopt.config.run_plan import eval_judge

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        default = compose(config_name="train", overrides=["data=sort"])
        jsonl = compose(config_name="train", overrides=["data=jsonl", "data.path=x.jsonl"])
        unset = compose(config_name="train", overrides=["judge=reward_model"])
        chosen = compose(config_name="train", overrides=["judge=reward_model", f"judge.path={rm_dir}"])
        none = compose(config_name="train", overrides=["judge=none"])
    assert isinstance(eval_judge(default), OracleJudge) and isinstance(eval_judge(jsonl), OracleJudge)
    assert isinstance(eval_judge(none), NoJudge) and isinstance(eval_judge(chosen), RewardModelJudge)
    assert "judge.path is required and has no value: add judge.path=... to the command" in config_problems(unset)
    assert not [p for p in config_problems(chosen) if "judge" in p]
    OmegaConf.set_struct(chosen, False)
    chosen.judge.bogus = 1
    with pytest.raises(ConfigError, match="judge.bogus is not a setting of the reward_model judge"):
        eval_judge(chosen)
    chosen.judge.pop("bogus")
    chosen.judge.dtype = "float8"
    with pytest.raises(ConfigError, match="^judge: dtype=float8 is not allowed"):
        eval_judge(chosen)


def test_lc_is_a_number_between_zero_and_one_for_the_judged_metrics():
    from prefopt.eval.judged import judged_metrics

    m = judged_metrics([1.0, 0.0], [0.0, 1.0], [3, 3], [3, 3], 0.0, 0)
    assert math.isclose(m["eval/judge_lc_win_rate"], 0.5, abs_tol=1e-9)
