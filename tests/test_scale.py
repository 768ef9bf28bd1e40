"""Multi-process and cluster paths checked on CPU: DDP with 2 gloo processes equals 1 process at the
same global batch; FSDP wraps the decoder layers; submitit_local runs a 2-job multirun."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_model
from prefopt.errors import ConfigError
from prefopt.train.trainer_factory import accumulation_for, build_strategy, decoder_layer_classes
from test_run import SMALL_SORT, run_cli

COMMON = [*SMALL_SORT, "trainer.max_steps=8", "loss=dpo", "logger=none", "checkpoint.enabled=false"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(cache_root, tmp_path):
    """The 2-rank run builds the reference tables (each rank its half of the pairs, rank 0 writes them);
    the 1-process run scores its reference live, and both train to the same weights."""
    common = [*COMMON, "data.max_length=62"]  # tables under a key no other test builds
    two = run_cli([*common, "data.batch_size=8", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.precision=32-true", f"hydra.run.dir={tmp_path / 'two'}"], cache_root, tmp_path,
                  timeout=600)  # two processes on a loaded 2-core machine
    assert two.returncode == 0, two.stderr[-2000:]
    one = run_cli([*common, "data.batch_size=16", "logp_cache=false", f"hydra.run.dir={tmp_path / 'one'}"], cache_root, tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    start = load_file(next(cache_root.glob("sort_sft/*/model.safetensors")))
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3  # both really trained
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    ra = json.loads((tmp_path / "one" / "results.json").read_text())
    rb = json.loads((tmp_path / "two" / "results.json").read_text())
    assert ra["metrics"]["val/loss"] == pytest.approx(rb["metrics"]["val/loss"], abs=1e-5)
    built = rb["info"]["logp_cache"]["tables"]["reference"]
    assert (built["status"], built["ranks"]) == ("built", 2) and rb["info"]["logp_cache"]["reference_released"]
    assert not ra["info"]["logp_cache"]["used"]
    table = load_file(cache_root / "logps" / f"reference-{built['key']}" / "train.safetensors")
    assert torch.isfinite(table["logps"]).all() and (table["tokens"] >= 1).all()
    assert two.stdout.count("computing reference log-probs") == 1  # rank 0 speaks for both


def test_fsdp_wraps_each_decoder_layer():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = tiny_model()
    assert decoder_layer_classes(model) == {LlamaDecoderLayer}
    strategy = build_strategy({"name": "fsdp", "activation_checkpointing": True, "state_dict_type": "sharded"}, model)
    assert isinstance(strategy, FSDPStrategy)
    with pytest.raises(ConfigError, match=r"trainer.strategy.name='zero'.*fsdp, deepspeed"):
        build_strategy({"name": "zero"}, model)


def test_effective_batch_sets_accumulation():
    assert accumulation_for(128, 8, 2) == 8
    assert accumulation_for(128, 1, 4) == 32
    with pytest.raises(ConfigError, match=r"effective_batch_size=128 is not a multiple of devices × data.batch_size = 3 × 2"):
        accumulation_for(128, 3, 2)


@pytest.mark.slow
def test_submitit_local_runs_two_jobs(cache_root, tmp_path):
    proc = run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "loss=dpo,simpo",
                    *COMMON[:-3], "trainer.max_steps=3", "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                   cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/results.json")]
    assert sorted(r["config"]["loss"]["_target_"].split(".")[-1] for r in results) == ["DPOLoss", "SimPOLoss"]
    assert all(r["status"] == "completed" for r in results)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_trainer_without_a_gpu_is_one_line(cache_root, tmp_path):
    proc = run_cli([*COMMON, "trainer=gpu", f"hydra.run.dir={tmp_path / 'run'}"], cache_root, tmp_path)
    assert proc.returncode == 1
    assert "error: the trainer settings do not work on this machine: No supported gpu backend found!" in proc.stderr
    assert "accelerator=gpu, devices=1" in proc.stderr and "Traceback" not in proc.stderr
