"""`model.compile`: true trains model=tiny on sort to the eager run's loss (inductor on the CPU, 1e-5) with
the compile time printed; reduce-overhead (CUDA graphs) is refused without CUDA in one line naming the
key; a value it does not take is refused too; compiled layers keep the state-dict keys (checkpoints and
the log-prob caches' weight fingerprints are unchanged)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import tiny_model
from prefopt.errors import ConfigError
from prefopt.losses import DPOLoss
from prefopt.train.compiling import compile_loss, compile_mode, compile_policy, decoder_layers

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs reduce-overhead")
def test_reduce_overhead_needs_cuda():
    with pytest.raises(ConfigError, match=r"^model.compile=reduce-overhead needs a CUDA GPU"):
        compile_policy(tiny_model(), "reduce-overhead")


def test_unknown_setting_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^model.compile='max' is not allowed"):
        compile_mode("max")
    assert compile_mode(False) is None and compile_mode(True) == "default"


def test_compiling_touches_only_the_decoder_layers_and_keeps_state_dict_keys():
    model = tiny_model(layers=2)
    keys = list(model.state_dict())
    assert compile_policy(model, False) is model and not any(getattr(m, "_compiled_call_impl", None)
                                                             for m in model.modules())
    compile_policy(model, True)
    layers = decoder_layers(model)
    assert len(layers) == 2 and all(layer._compiled_call_impl is not None for layer in layers)
    assert list(model.state_dict()) == keys
    loss = compile_loss(DPOLoss(), True)
    assert "compute" in vars(loss)  # the instance's compute is the compiled one


def _sort_run(folder: Path, *overrides: str) -> tuple[dict, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "src/run.py", "data=sort", "loss=dpo", "trainer.max_steps=3",
                          f"hydra.run.dir={folder}", *overrides], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads((folder / "train_metrics.json").read_text())["metrics"], out.stdout + out.stderr


@pytest.mark.slow
def test_compiled_sort_run_matches_eager(tmp_path):
    """3 steps of model=tiny on sort, eager and compiled (inductor on the CPU, ~40 s of compiling)."""
    eager, _ = _sort_run(tmp_path / "eager")
    compiled, log = _sort_run(tmp_path / "compiled", "model.compile=true")
    assert "model.compile=True: first step" in log and "compiling cost about" in log
    for key in ("train/loss", "train/logps/chosen", "train/logps/rejected", "val/loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-5, abs=1e-5), key
