"""Config mistakes first (prefopt.config.run_plan.starting_choice): a model.path that is neither a local folder nor
a cached or reachable hub id stops the run in one line before the task builds any data."""

import pytest

from prefopt.models.load import ModelLoadError, check_reachable
from test_run import run_cli


def test_a_missing_local_folder_or_an_unreachable_hub_id_is_one_line(tmp_path, monkeypatch):
    from prefopt.models import load

    with pytest.raises(ModelLoadError, match="does not exist"):
        check_reachable(str(tmp_path / "no-such-model"))
    monkeypatch.setattr(load, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        check_reachable("some-org/some-model-never-downloaded")
    (tmp_path / "model").mkdir()
    check_reachable(str(tmp_path / "model"))  # a folder: its contents are checked when it loads


@pytest.mark.slow
def test_an_unloadable_model_stops_before_the_task_builds(cache_root, tmp_path):
    proc = run_cli(["model=mistral7b", "data=imdb", f"hydra.run.dir={tmp_path / 'run'}"], cache_root, tmp_path,
                   timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "Cannot load model.path=HuggingFaceH4/mistral-7b-sft-beta" in out
    assert "[imdb]" not in out and "Traceback" not in out  # no IMDb artifact was built first


def test_a_users_file_on_model_tiny_warns_of_random_weights(caplog):
    from hydra import compose, initialize_config_dir

    from prefopt.config.components import build_component
    from prefopt.config.run_plan import starting_choice
    from test_config import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=jsonl", "data.path=/x.jsonl", "model=tiny"])
    assert starting_choice(cfg, build_component(cfg.data.source, "data.source")).kind == "tiny"
    assert "model=tiny on data=jsonl starts from random weights" in caplog.text
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=sort", "model=tiny"])
    caplog.clear()
    assert starting_choice(cfg, build_component(cfg.data.source, "data.source")).kind == "task"  # its own SFT
    assert "random weights" not in caplog.text
