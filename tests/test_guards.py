"""A non-finite loss stops the run at that step, keeps the last good weights, and results.json says why."""

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import PAIRS, pair_batch, tiny_model
from prefopt.errors import TrainingDiverged
from prefopt.train.guards import FiniteGuard
from prefopt.losses import SimPOLoss
from prefopt.train.module import PreferenceModule

pytestmark = pytest.mark.slow  # every test here starts a run (`pytest -m "not slow"` skips them)


class InjectNaN(L.Callback):
    """Poison one weight before the given (0-based) batch."""

    def __init__(self, at_batch):
        self.at_batch = at_batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at_batch:
            with torch.no_grad():
                pl_module.policy.get_input_embeddings().weight[5, 0] = float("nan")


def test_nan_loss_stops_at_its_step_and_saves_last_good(tmp_path):
    module = PreferenceModule(tiny_model(), SimPOLoss(), lr=1e-3)
    trainer = L.Trainer(max_steps=6, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[InjectNaN(3), FiniteGuard(tmp_path)])
    with pytest.raises(TrainingDiverged, match=r"non-finite loss \(nan\) at step 4.*last-good.ckpt"):
        trainer.fit(module, train_dataloaders=DataLoader([pair_batch(PAIRS)] * 6, batch_size=None))
    assert trainer.global_step == 3
    saved = torch.load(tmp_path / "last-good.ckpt", weights_only=False)
    assert saved["global_step"] == 3


def test_nan_gradient_is_caught():
    module = PreferenceModule(tiny_model(), SimPOLoss(), lr=1e-3)

    class PoisonGrad(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            pl_module.policy.get_input_embeddings().weight.grad[0, 0] = float("inf")

    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[PoisonGrad(), FiniteGuard()])
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient in policy.model.embed_tokens.weight at step 1"):
        trainer.fit(module, train_dataloaders=DataLoader([pair_batch(PAIRS)] * 2, batch_size=None))


def test_run_with_nan_weights_is_recorded_as_failed(tmp_path, cache_root):
    """End to end: a policy folder with a NaN weight; the run fails at step 1 with a one-line reason."""
    from safetensors.torch import load_file, save_file

    from test_run import run_cli

    from prefopt.data.tokenizer_builder import build_bpe_tokenizer

    tok_dir = tmp_path / "policy"
    tokenizer = build_bpe_tokenizer(["a b c d e f g"], vocab_size=300)
    model = tiny_model()
    model.resize_token_embeddings(len(tokenizer))
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.save_pretrained(tok_dir)
    tokenizer.save_pretrained(tok_dir)
    weights = load_file(tok_dir / "model.safetensors")
    name = next(k for k in weights if "embed_tokens" in k)
    weights[name][3, 0] = float("nan")  # tied embeddings: every softmax over the vocabulary sees it
    save_file(weights, tok_dir / "model.safetensors", metadata={"format": "pt"})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": "a b", "chosen": f"c {i}", "rejected": "d"}) + "\n" for i in range(8)))
    proc = run_cli(["model=mistral7b", f"model.path={tok_dir}", "model.dtype=float32", "data=jsonl",
                    f"data.path={pairs}", "loss=simpo", "trainer.max_steps=3", "data.batch_size=2",
                    "logger=none", f"hydra.run.dir={tmp_path / 'r'}"], cache_root, tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "non-finite loss" in proc.stderr and "step 1" in proc.stderr and "Traceback" not in proc.stderr
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["status"] == "failed" and "non-finite loss" in results["error"]
