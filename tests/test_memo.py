"""The per-process memo of task artifacts and starting policies (prefopt.store.memo): built once for
equal settings, a fresh copy per run, nothing kept from a failed build, an edited data file re-read."""

import os

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.store import memo
from prefopt.tasks.base import TaskArtifacts


class CountingSource:
    def __init__(self, fail=False):
        self.builds, self.fail = 0, fail

    def build(self, start, model_cfg, cache_root):
        self.builds += 1
        if self.fail:
            raise RuntimeError("broken task")
        return TaskArtifacts(train_rows=[{"prompt": "a", "chosen": "b", "rejected": "c"}], eval_rows=[],
                             eval_prompts=["p"], info={"task/n": {"pairs": 1}})


@pytest.fixture(autouse=True)
def fresh():
    memo.clear()
    yield
    memo.clear()


def test_artifacts_built_once_and_each_run_gets_its_own_copy(tmp_path):
    source, cfg, model = CountingSource(), OmegaConf.create({"n": 1}), OmegaConf.create({"name": "tiny"})
    first = memo.task_artifacts(source, cfg, None, model, tmp_path)
    first.train_rows.append({"prompt": "x"})  # a run that mutates what it got
    first.info["task/n"]["pairs"] = 99
    second = memo.task_artifacts(source, cfg, None, model, tmp_path)
    assert source.builds == 1 and memo.stats["artifacts_hits"] == 1
    assert len(second.train_rows) == 1 and second.info == {"task/n": {"pairs": 1}}
    memo.task_artifacts(source, OmegaConf.create({"n": 2}), None, model, tmp_path)  # other settings: built again
    assert source.builds == 2


def test_a_failed_build_is_not_kept(tmp_path):
    source = CountingSource(fail=True)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="broken task"):
            memo.task_artifacts(source, {"n": 1}, None, {}, tmp_path)
    assert source.builds == 2


def test_an_edited_data_file_is_read_again(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    source, cfg = CountingSource(), {"path": str(data)}
    memo.task_artifacts(source, cfg, None, {}, tmp_path)
    data.write_text("{}\n{}\n")
    os.utime(data, ns=(1, 10**18))
    memo.task_artifacts(source, cfg, None, {}, tmp_path)
    assert source.builds == 2


def test_starting_policy_loaded_once_copies_are_independent():
    loads = []

    def load():
        loads.append(1)
        return torch.nn.Linear(2, 2), {"pad": 0}

    a, tok_a = memo.starting_policy(load, OmegaConf.create({"name": "tiny"}), "folder", 0)
    with torch.no_grad():
        a.weight.add_(1.0)  # training the first run's policy
    b, tok_b = memo.starting_policy(load, OmegaConf.create({"name": "tiny"}), "folder", 0)
    assert len(loads) == 1 and memo.stats["policy_hits"] == 1
    assert b is not a and tok_b is not tok_a
    assert torch.allclose(b.weight, a.weight - 1.0)  # the untrained weights, not the trained ones
    memo.starting_policy(load, OmegaConf.create({"name": "tiny"}), "folder", 1)  # another seed: loaded
    assert len(loads) == 2


def test_tokenized_pairs_once_per_rows_tokenizer_and_settings():
    from prefopt.data.datamodule import PreferenceDataModule
    from prefopt.data.tokenizer_builder import build_bpe_tokenizer

    tok = build_bpe_tokenizer(["one two three four"] * 10, vocab_size=300)
    rows = [{"prompt": "one two", "chosen": " three", "rejected": " four four"}] * 6

    def setup(**kw):
        dm = PreferenceDataModule(rows, rows[:2], tok, **{**dict(max_length=16, max_prompt_length=8, batch_size=2,
                                                                  eval_batch_size=2, seed=0), **kw})
        dm.setup()
        return dm

    first, second = setup(), setup()
    assert memo.stats["tokenized_hits"] == 2  # train and eval splits of the second module
    assert second.train_dataset.items == first.train_dataset.items
    assert second.train_dataset.items is not first.train_dataset.items and second.stats == first.stats
    setup(max_length=5)  # other truncation: tokenized again
    assert memo.stats["tokenized_hits"] == 2
    other = build_bpe_tokenizer(["one two three four five"] * 10, vocab_size=300)
    PreferenceDataModule(rows, [], other, max_length=16, max_prompt_length=8, batch_size=2, eval_batch_size=2,
                         seed=0).setup()  # another tokenizer: train split tokenized again (eval: empty rows)
    assert memo.stats["tokenized_hits"] == 2


@pytest.mark.slow
def test_a_multirun_reuses_artifacts_policy_and_tokens_and_still_isolates_a_failure(cache_root, tmp_path):
    """Three jobs in one process (Hydra's basic launcher): the second and third reuse what the first
    loaded; the middle one fails (label smoothing outside [0, 0.5), before any loading) and the third
    still completes."""
    import json

    from test_run import SMALL_SORT, run_cli

    args = ["-m", *SMALL_SORT, "trainer.max_steps=2", "loss=dpo", "loss.label_smoothing=0.0,0.7,0.1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = run_cli(args, cache_root, tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one job failed: the multirun says so after the others ran
    results = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/results.json")}
    by_smoothing = {name.split("label_smoothing=")[1].split(",")[0]: r for name, r in results.items()}
    assert by_smoothing["0.7"]["status"] == "failed"
    first, last = by_smoothing["0.0"], by_smoothing["0.1"]
    assert first["status"] == last["status"] == "completed"
    assert first["info"]["memo"] == {"artifacts_hits": 0, "policy_hits": 0, "tokenized_hits": 0}
    assert last["info"]["memo"]["artifacts_hits"] == 1 and last["info"]["memo"]["tokenized_hits"] >= 2
    assert last["info"]["memo"]["policy_hits"] >= 1
