"""One-line errors for what a user leaves out or points wrong: a mandatory config value left unset names
the key (prefopt/config/validate.py check_required, called first by the runner), and a model.path that does not
exist says so, mentioning `hf download` only for strings that look like hub ids (prefopt/models/load.py), and
a model the task cannot start from (data=sort model=smollm2_135m) is one line before anything is built
(prefopt/models/choose.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from prefopt.errors import ConfigError
from prefopt.models.load import ModelLoadError, load_pretrained, looks_like_hub_id
from prefopt.config.components import raise_problems
from prefopt.config.validate import missing_problems

ROOT = Path(__file__).resolve().parents[1]


def test_unset_mandatory_value_is_named():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=jsonl"])
    with pytest.raises(ConfigError) as err:
        raise_problems(missing_problems(cfg))  # data.source.path interpolates it: OmegaConf would fail there, with a traceback
    assert str(err.value) == "data.path is required and has no value: add data.path=... to the command"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        assert missing_problems(compose(config_name="train", overrides=["data=jsonl", "data.path=pairs.jsonl"])) == []


@pytest.mark.slow
def test_unset_data_path_on_the_command_line_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PREFOPT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), "data=jsonl", f"hydra.run.dir={tmp_path / 'r'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: data.path is required and has no value: add data.path=... to the command"
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["status"] == "failed" and results["error"].startswith("data.path is required")


@pytest.mark.slow
def test_a_model_the_task_cannot_start_from_stops_in_one_line_before_anything_is_built(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PREFOPT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), "data=sort", "model=smollm2_135m",
                           f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: data=sort trains its own policy from scratch and needs a model "
                                          "config with a `tiny` architecture block (model=tiny); got "
                                          "model='smollm2_135m' with model.gguf=")
    assert "\n" not in proc.stderr.strip() and proc.stderr.strip().endswith("data=jsonl data.path=<the task's "
                                                                           "pairs.jsonl in the cache>.")
    assert not list((tmp_path / "cache").glob("sort_*"))  # chosen before the task built its SFT policy


def test_a_missing_model_folder_says_so_without_a_download_hint(tmp_path):
    for path in (str(tmp_path / "mistral-7b-sft-beta"), "/models/mistral-7b-sft-beta", "./weights", "~/nope/x"):
        with pytest.raises(ModelLoadError) as err:
            load_pretrained(path)
        assert str(err.value) == f"model.path={path} does not exist (no such folder)"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"model.safetensors is a file, not the folder holding config.json"):
        load_pretrained(str(weights))


def test_a_hub_id_that_cannot_be_fetched_says_how_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_pretrained("no-such-org/no-such-model-1234")
    message = str(err.value)
    assert "\n" not in message and message.startswith("Cannot load model.path=no-such-org/no-such-model-1234: there is")
    assert "`hf download no-such-org/no-such-model-1234 --local-dir /path/to/dir`" in message


def test_hub_id_shape():
    assert looks_like_hub_id("HuggingFaceH4/mistral-7b-sft-beta") and looks_like_hub_id("princeton-nlp/Llama-3-Base-8B-SFT")
    for path in ("/models/x", "./x/y", "~/x", "x", "a/b/c", "../a"):
        assert not looks_like_hub_id(path), path
