"""Tests of the IMDb task build (prefopt.tasks.imdb.ImdbTask) at tiny sizes: artifacts, disjoint prompts,
cache hits, which settings rebuild what, the architecture override and the pretrained-model route."""

import json

import pytest
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

import prefopt.tasks.imdb as imdb_module
from prefopt.models.choose import choose_start
from prefopt.errors import ConfigError
from prefopt.models.load import build_tiny
from prefopt.tasks.imdb import ImdbTask
from prefopt.tasks.imdb_reward import SentimentReward

TINY = OmegaConf.create({"name": "tiny", "vocab_size": 512, "tiny": {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
    "max_position_embeddings": 256}})
SMALL = dict(n_classifier=600, n_classifier_test=200, classifier_windows=2, n_sft_reviews=120, sft_steps=20,
             sft_batch_size=16, sft_seq_len=32, n_pair_prompts=40, samples_per_prompt=3, n_eval_prompts=12,
             eval_fraction=0.25, max_new_tokens=8, architecture={"hidden_size": 16, "num_hidden_layers": 1,
                                                                 "intermediate_size": 32})


def build_for(task, model_cfg, cache_root):
    """`task.build` with the start a run would choose for `model_cfg` (prefopt.config.plan chooses it once)."""
    return task.build(choose_start(model_cfg, task), model_cfg, cache_root)


def no_rebuild(monkeypatch, *names):
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a cached artifact")

    for name in names:
        monkeypatch.setattr(imdb_module, name, fail)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("imdb-cache")
    return root, build_for(ImdbTask(**SMALL), TINY, root)


def test_build_returns_pairs_prompts_and_oracle(built):
    root, art = built
    rows = art.train_rows + art.eval_rows
    assert art.train_rows and art.eval_rows
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected"} and row["chosen"] != row["rejected"]
        assert 2 <= len(row["prompt"].split(" ")) <= 8
    assert not {r["prompt"] for r in art.train_rows} & {r["prompt"] for r in art.eval_rows}
    assert art.info["imdb/n_pairs"] == len(rows) <= 40 * 3  # 3 pairs per prompt at most, ties dropped
    assert len(art.eval_prompts) == 12 and art.generation == {"max_new_tokens": 8, "temperature": 1.0}
    # the oracle ranked every pair: chosen scores higher than rejected
    chosen = art.oracle([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = art.oracle([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert all(c > r for c, r in zip(chosen, rejected))
    assert isinstance(art.oracle, SentimentReward) and 0 <= min(chosen) and max(chosen) <= 1
    # the pairs file is the standard format data=jsonl reads
    lines = open(art.info["imdb/pairs_file"]).read().splitlines()
    assert [json.loads(line) for line in lines] == rows
    model = AutoModelForCausalLM.from_pretrained(art.policy)
    assert model.config.hidden_size == 16 and model.config.intermediate_size == 32  # architecture wins
    assert model.config.num_attention_heads == 4 and model.config.vocab_size == 512  # the rest: model.tiny
    assert 0.6 < art.info["imdb/classifier_accuracy_full"] <= 1.0


def test_eval_prompts_come_from_held_out_reviews(built):
    task = ImdbTask(**SMALL)
    eval_texts = {r.text for r in task.pools()["eval"]}
    pair_texts = {r.text for r in task.pools()["pairs"]}
    assert not eval_texts & pair_texts
    assert all(any(t.startswith(p) for t in eval_texts) for p in built[1].eval_prompts)


def test_cache_hit_rebuilds_nothing(built, monkeypatch):
    root, art = built
    no_rebuild(monkeypatch, "train_classifier", "build_bpe_tokenizer", "train_causal_lm", "sample")
    again = build_for(ImdbTask(**SMALL), TINY, root)
    assert again.train_rows == art.train_rows and again.policy == art.policy


def test_changing_pair_settings_keeps_reward_tokenizer_and_policy(built, monkeypatch):
    root, art = built
    no_rebuild(monkeypatch, "train_classifier", "build_bpe_tokenizer", "train_causal_lm")
    other = build_for(ImdbTask(**{**SMALL, "samples_per_prompt": 2}), TINY, root)
    assert other.policy == art.policy and other.info["imdb/pairs_key"] != art.info["imdb/pairs_key"]
    assert other.info["imdb/n_pairs"] <= 40


def test_changing_sft_steps_keeps_reward_and_tokenizer(built, monkeypatch):
    root, art = built
    no_rebuild(monkeypatch, "train_classifier", "build_bpe_tokenizer")
    other = build_for(ImdbTask(**{**SMALL, "sft_steps": 10}), TINY, root)
    assert other.policy != art.policy and other.info["imdb/reward_key"] == art.info["imdb/reward_key"]


def test_pretrained_model_route_samples_pairs_without_sft(built, monkeypatch, tmp_path):
    """A model config with `model.gguf` (model=smollm2_135m) is the starting policy as load_start gives it."""
    root, art = built
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(art.policy)
    calls = []

    def fake_load_start(start, model_cfg, cache_root, task_policy):
        calls.append((start.kind, model_cfg.name, task_policy))
        return build_tiny(tokenizer, hidden_size=16, num_hidden_layers=1, intermediate_size=32), tokenizer

    monkeypatch.setattr(imdb_module, "load_start", fake_load_start)
    no_rebuild(monkeypatch, "train_classifier", "build_bpe_tokenizer", "train_causal_lm")
    cfg = OmegaConf.create({"name": "smollm2_135m", "path": None, "gguf": {"package": "p", "file": "f.gguf"}})
    other = build_for(ImdbTask(**SMALL), cfg, root)
    assert calls == [("gguf", "smollm2_135m", None)] and other.policy is None and other.train_rows
    assert "imdb/sft_key" not in other.info


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data.source.n_pair_prompts=100000 asks for more reviews"):
        ImdbTask(n_pair_prompts=100_000).pair_prompts()
    with pytest.raises(ConfigError, match=r"max_position_embeddings=16 is shorter than data.source.sft_seq_len=32"):
        build_for(ImdbTask(**{**SMALL, "architecture": {"max_position_embeddings": 16}}), TINY, tmp_path)  # builds nothing
    with pytest.raises(ValueError, match="samples_per_prompt must be at least 2"):
        ImdbTask(samples_per_prompt=1)
    with pytest.raises(ValueError, match="prompt_min_words"):
        ImdbTask(prompt_min_words=5, prompt_max_words=3)
