"""A non-finite loss stops the run at that step, keeps the last good weights, and results.json says why;
the message ends with the shell command that goes on from those weights at half the learning rate, and
that resume takes the new rate (the restored optimizer and schedule follow it, hand-worked below)."""

import json
import math
import shlex

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import PAIRS, optim, pair_batch, tiny_model
from prefopt.errors import TrainingDiverged
from prefopt.train.guards import FiniteGuard
from prefopt.losses import SimPOLoss
from prefopt.train.module import PreferenceModule



class InjectNaN(L.Callback):
    """Poison one weight before the given (0-based) batch."""

    def __init__(self, at_batch):
        self.at_batch = at_batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at_batch:
            with torch.no_grad():
                pl_module.policy.get_input_embeddings().weight[5, 0] = float("nan")


@pytest.mark.slow
def test_nan_loss_stops_at_its_step_and_saves_last_good(tmp_path):
    module = PreferenceModule(tiny_model(), SimPOLoss(), **optim(lr=1e-3))
    trainer = L.Trainer(max_steps=6, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[InjectNaN(3), FiniteGuard(tmp_path)])
    with pytest.raises(TrainingDiverged, match=r"non-finite loss \(nan\) at step 4.*last-good.ckpt"):
        trainer.fit(module, train_dataloaders=DataLoader([pair_batch(PAIRS)] * 6, batch_size=None))
    assert trainer.global_step == 3
    saved = torch.load(tmp_path / "last-good.ckpt", weights_only=False)
    assert saved["global_step"] == 3


@pytest.mark.slow
def test_nan_gradient_is_caught():
    module = PreferenceModule(tiny_model(), SimPOLoss(), **optim(lr=1e-3))

    class PoisonGrad(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            pl_module.policy.get_input_embeddings().weight.grad[0, 0] = float("inf")

    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[PoisonGrad(), FiniteGuard()])
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient in policy.model.embed_tokens.weight at step 1"):
        trainer.fit(module, train_dataloaders=DataLoader([pair_batch(PAIRS)] * 2, batch_size=None))


@pytest.mark.slow
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
    command = proc.stderr.split("go on from them with half the learning rate: ", 1)[1].splitlines()[0]
    argv = shlex.split(command)  # the job's own overrides, its folder, the checkpoint and half of model=mistral7b's lr
    assert argv[:4] == ["python", "src/run.py", "model=mistral7b", f"model.path={tok_dir}"]
    ckpt = tmp_path / "r" / "checkpoints" / "last-good.ckpt"
    assert argv[-3:] == [f"hydra.run.dir={tmp_path / 'r'}", f"ckpt_path={ckpt}", "optim.lr=2.5e-07"]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["status"] == "failed" and "non-finite loss" in results["error"]


class NaNLossAt(PreferenceModule):
    """A module whose loss is NaN at one optimizer step (0-based), its weights untouched."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == 3 else loss


class LearningRates(L.Callback):
    """The lr each optimizer step used, and the lr after the schedule stepped, by global step."""

    def __init__(self):
        self.used, self.after = {}, {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.used[trainer.global_step] = [g["lr"] for g in optimizer.param_groups]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step] = [g["lr"] for g in trainer.optimizers[0].param_groups]


def fit(module, callbacks, ckpt_path=None):
    trainer = L.Trainer(max_steps=8, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=DataLoader([pair_batch(PAIRS)] * 8, batch_size=None), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.slow
def test_resume_from_last_good_with_half_the_lr_follows_the_new_schedule(tmp_path):
    run_dir = tmp_path / "it's a run"  # the command must paste as it is
    schedule = dict(warmup_ratio=0.0, min_lr_ratio=0.0)  # lr(s) = peak · ½(1 + cos(π s / 8)), 8 steps
    with pytest.raises(TrainingDiverged) as stop:
        fit(NaNLossAt(tiny_model(), SimPOLoss(), **optim(lr=1e-3, **schedule)),
            [FiniteGuard(run_dir / "checkpoints", overrides=["loss=simpo", "optim.lr=1e-3"])])
    ckpt = run_dir / "checkpoints" / "last-good.ckpt"
    message = str(stop.value)
    assert message.startswith(f"non-finite loss (nan) at step 4 (lower optim.lr or check the data); the weights "
                              f"before this step are in {ckpt}; go on from them with half the learning rate: ")
    argv = shlex.split(message.rsplit(": ", 1)[1])  # what the shell hands to src/run.py
    assert argv == ["python", "src/run.py", "loss=simpo", f"hydra.run.dir='{tmp_path}/it\\'s a run'",
                    f"ckpt_path='{ckpt.parent}/last-good.ckpt'".replace("it's", "it\\'s"), "optim.lr=0.0005"]

    rates = LearningRates()
    trainer = fit(PreferenceModule(tiny_model(), SimPOLoss(), **optim(lr=5e-4, **schedule)), [rates], ckpt_path=str(ckpt))
    assert trainer.global_step == 8 and min(rates.used) == 3  # steps 4-8 (0-based 3-7) were trained again
    # step 3 runs at 5e-4 · ½(1 + cos(3π/8)) = 5e-4 · 0.691342 = 3.45671e-4 (the old peak would give twice that)
    assert rates.used[3] == pytest.approx([3.45671e-4] * 2, rel=1e-5)
    assert rates.after[4] == pytest.approx([2.5e-4] * 2, rel=1e-6)  # then 5e-4 · ½(1 + cos(π/2))
    assert rates.used[7] == pytest.approx([5e-4 * 0.5 * (1 + math.cos(7 * math.pi / 8))] * 2, rel=1e-6)
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == [5e-4, 5e-4]


def test_a_resume_may_change_the_learning_rate_and_nothing_else_of_optim():
    from prefopt.train.resume import differences, flat_config

    cfg = {"seed": 0, "optim": {"lr": 1e-3, "weight_decay": 0.0, "optimizer": {"lr": 1e-3, "betas": [0.9, 0.95]}}}
    saved = {"tokenizer": "t", "train_pairs": "a", "eval_pairs": "b", "config": flat_config(cfg)}
    assert saved["config"] == {"seed": 0, "optim.weight_decay": 0.0, "optim.optimizer.betas": [0.9, 0.95]}
    halved = {**cfg, "optim": {**cfg["optim"], "lr": 5e-4, "optimizer": {"lr": 5e-4, "betas": [0.9, 0.95]}}}
    assert differences(saved, {**saved, "config": flat_config(halved)}) == []
    older = {**saved, "config": {**saved["config"], "optim.lr": 1e-3}}  # recorded before optim.lr was resumable
    assert differences(older, {**saved, "config": flat_config(halved)}) == []
    decayed = {**cfg, "optim": {**cfg["optim"], "weight_decay": 0.1}}
    assert differences(saved, {**saved, "config": flat_config(decayed)}) == ["optim.weight_decay 0.0 -> 0.1"]


@pytest.mark.slow
def test_a_run_resumes_with_a_changed_lr_through_the_command_line(cache_root, tmp_path):
    """End to end: the checkpoint's record accepts the new optim.lr, and the resumed run says it follows it."""
    from test_run import SMALL_SORT, run_cli

    run_dir = tmp_path / "r"
    args = [*SMALL_SORT, "loss=dpo", "logger=none", "optim.lr=1e-3", f"hydra.run.dir={run_dir}"]
    assert run_cli(args, cache_root, tmp_path).returncode == 0
    (run_dir / "results.json").unlink()  # as if it had stopped there
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc = run_cli([*args, "trainer.max_steps=16", f"ckpt_path={ckpt}", "optim.lr=5e-4"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "optim.lr 0.001 -> 0.0005 on resume: the schedule goes on from step 12 with the new peak" in proc.stdout
    assert json.loads((run_dir / "results.json").read_text())["info"]["resumed_from"]["step"] == 12
