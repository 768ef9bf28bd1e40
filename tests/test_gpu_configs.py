"""Every trainer config trains on CPU with its own precision, gradient clipping and optimizer.

conf/trainer/{gpu,ddp,fsdp,deepspeed}.yaml train in bf16-mixed with gradient_clip_val 1.0 and (but for
DeepSpeed) the fused AdamW, a combination Lightning's mixed-precision plugin refuses to clip. Here each
config is composed as a user gets it, only the accelerator and device count overridden, and trains
three steps of the tiny model in process; FSDP and DeepSpeed, which Lightning cannot run on a CPU, are
built, and their precision / optimizer / clipping combination trains under the cpu strategy.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from helpers import PAIRS, collated, optim, tiny_model
from prefopt.train.clipping import GradientClipper, clip_gradients
from prefopt.errors import ConfigError
from prefopt.losses import SimPOLoss
from prefopt.train.module import PreferenceModule
from prefopt.train.trainer_factory import DataFitCheck, build_strategy, build_trainer, check_one_step_fits, take_clipping

CONF = Path(__file__).resolve().parents[1] / "conf"


def composed(trainer: str, *overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"trainer={trainer}", "checkpoint.enabled=false", *overrides])


def grad_norm(module) -> float:
    grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm())


class NormProbe(Callback):
    """Records the global gradient norm each time the optimizer is about to step."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.norms.append(grad_norm(pl_module))


def train_three_steps(cfg, tmp_path, fused: bool = True, batch=None):
    """Three optimizer steps of SimPO on the tiny model with `cfg.trainer` (on `batch`, default the
    padded rows of PAIRS); returns the pieces to check."""
    module = PreferenceModule(tiny_model(), SimPOLoss(beta=10.0), **optim(lr=1e-3, warmup_ratio=0.0))
    if not fused:  # DeepSpeed's optimizer is the per-tensor AdamW
        module._fused_adam = lambda params: False
    start = {k: v.clone() for k, v in module.policy.state_dict().items()}
    before, after = NormProbe(), NormProbe()
    trainer = build_trainer(cfg, tmp_path, [], "test", model=module.policy, extra_callbacks=[before])
    trainer.callbacks.append(after)  # after the clipper
    batch = collated(PAIRS) if batch is None else batch
    trainer.fit(module, train_dataloaders=DataLoader([batch] * 3, batch_size=None))
    moved = max((module.policy.state_dict()[k] - v).abs().max().item() for k, v in start.items())
    return trainer, module, before.norms, after.norms, moved


def check_trained(trainer, module, before, after, moved, precision: str, fused: bool, clip: float):
    assert trainer.global_step == 3 and str(trainer.precision) == precision
    assert module.optimizers().optimizer.defaults["fused"] is (True if fused else None)
    assert moved > 1e-4 and all(torch.isfinite(p).all() for p in module.policy.parameters())
    assert len(before) == len(after) == 3
    for pre, post in zip(before, after):  # clipped to the config's norm, untouched below it
        assert post == pytest.approx(min(pre, clip), rel=1e-4)
    assert max(before) > clip  # the clip really bound at least once


@pytest.mark.parametrize(("name", "packs"), [("cpu", False), ("gpu", True), ("ddp", True), ("fsdp", False),
                                           ("deepspeed", False)])
def test_data_pack_auto_packs_on_gpus_unless_parameters_are_sharded(name, packs):
    from prefopt.scoring.layout import choose_layout

    def packs_pairs(cfg):
        return choose_layout(cfg.data.pack, cfg.share_prompt, cfg.trainer).pack

    assert composed(name).data.pack == "auto" and packs_pairs(composed(name)) is packs
    assert packs_pairs(composed(name, "data.pack=false")) is False
    assert packs_pairs(composed(name, "data.pack=true")) is True
    if name == "cpu":  # accelerator auto: as torch sees this machine
        assert packs_pairs(composed(name, "trainer.accelerator=auto")) is torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_single_device_configs_train_with_their_precision_clipping_and_optimizer(name, tmp_path):
    cfg = composed(name, "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=3")
    run = train_three_steps(cfg, tmp_path)
    check_trained(*run, precision=cfg.trainer.precision, fused=True, clip=cfg.trainer.gradient_clip_val)
    assert name == "cpu" or cfg.trainer.precision == "bf16-mixed"


@pytest.mark.slow
@pytest.mark.parametrize("pack", [False, True])
def test_ddp_config_trains_with_its_precision_clipping_and_optimizer(pack, tmp_path, monkeypatch):
    """DDP in this process (one gloo rank): the DDP wrapper, bf16-mixed, fused AdamW and clipping together,
    on padded rows and on the prompt-once packed rows that `data.pack=auto` gives a DDP run on GPUs."""
    import torch.distributed as dist

    from prefopt.scoring import tree as tree_file
    from test_tree_logps import collate

    calls = []
    real = tree_file.tree_logps
    monkeypatch.setattr(tree_file, "tree_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = composed("ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=3")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.precision == "bf16-mixed"
    try:
        run = train_three_steps(cfg, tmp_path, batch=collate(PAIRS) if pack else None)
        assert type(run[0].strategy).__name__ == "DDPStrategy"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    check_trained(*run, precision="bf16-mixed", fused=True, clip=cfg.trainer.gradient_clip_val)
    assert (len(calls) >= 3) is pack  # every step scored on the tree rows (plus the model's one probe)


@pytest.mark.slow
def test_fsdp_config_builds_and_its_combination_trains(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy

    fsdp = composed("fsdp").trainer
    strategy = build_strategy(dict(fsdp.strategy), tiny_model())
    assert isinstance(strategy, FSDPStrategy)
    kwargs = {"strategy": strategy, "gradient_clip_val": fsdp.gradient_clip_val}
    assert [type(c) for c in take_clipping(kwargs)] == [GradientClipper] and "gradient_clip_val" not in kwargs
    cfg = composed("cpu", f"trainer.precision={fsdp.precision}", f"trainer.gradient_clip_val={fsdp.gradient_clip_val}",
                   "trainer.max_steps=3")
    check_trained(*train_three_steps(cfg, tmp_path), precision=fsdp.precision, fused=True,
                  clip=fsdp.gradient_clip_val)


@pytest.mark.slow
def test_deepspeed_config_builds_or_says_how_and_its_combination_trains(tmp_path):
    import importlib.util

    ds = composed("deepspeed").trainer
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match="trainer=deepspeed needs DeepSpeed, which is not installed"):
            build_strategy(dict(ds.strategy), tiny_model())
    kwargs = {"strategy": "deepspeed_stage_3", "gradient_clip_val": ds.gradient_clip_val}
    assert take_clipping(kwargs) == [] and kwargs["gradient_clip_val"] == 1.0  # DeepSpeed clips in its engine
    cfg = composed("cpu", f"trainer.precision={ds.precision}", f"trainer.gradient_clip_val={ds.gradient_clip_val}",
                   "trainer.max_steps=3")
    check_trained(*train_three_steps(cfg, tmp_path, fused=False), precision=ds.precision, fused=False,
                  clip=ds.gradient_clip_val)


def test_clipping_by_hand_with_and_without_an_fp16_scaler():
    """Gradients (3, 4) have norm 5: clipped to 1 they are (0.6, 0.8). Under an fp16 GradScaler of scale 4
    the fused optimizer's gradients arrive as (12, 16); the clipper unscales them first, and the
    scaler's step then leaves them unscaled: the same update as without a scaler."""
    results = []
    for scale in (None, 4.0):
        w = torch.nn.Parameter(torch.zeros(2))
        opt = torch.optim.AdamW([w], lr=0.1, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
        if scaler:
            scaler.scale(torch.ones(()))  # as a scaled backward would: the scale tensor exists
        w.grad = torch.tensor([3.0, 4.0]) * (scale or 1.0)
        trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), strategy=SimpleNamespace())
        clip_gradients(trainer, opt, 1.0)
        torch.testing.assert_close(w.grad, torch.tensor([0.6, 0.8]))
        scaler.step(opt) if scaler else opt.step()
        results.append(w.detach().clone())
    torch.testing.assert_close(results[0], results[1])
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, -4.0])
    clip_gradients(SimpleNamespace(precision_plugin=None, strategy=None), torch.optim.SGD([w], lr=1), 2.5, "value")
    torch.testing.assert_close(w.grad, torch.tensor([2.5, -2.5]))
    with pytest.raises(ConfigError, match="trainer.gradient_clip_algorithm='max' is not allowed"):
        GradientClipper(1.0, "max")


def test_data_smaller_than_one_optimizer_step_is_one_line():
    """64 rows of which 62 train, batch 2: 31 batches, but effective batch 128 on 1 device accumulates 64."""
    with pytest.raises(ConfigError, match=r"^62 train pairs make 31 batch\(es\) per device, fewer than the 64 "
                                          r"accumulated for one optimizer step \(1 device\(s\)\): lower "
                                          r"data.effective_batch_size"):
        check_one_step_fits(31, 64, 1, 62)
    check_one_step_fits(31, 31, 1, 62)


def test_val_check_interval_longer_than_an_epoch_is_lowered_to_it(capsys):
    datamodule = SimpleNamespace(train_dataloader=lambda: [None] * 31, train_dataset=[None] * 62)
    trainer = SimpleNamespace(datamodule=datamodule, accumulate_grad_batches=2, world_size=1,
                              val_check_interval=128, check_val_every_n_epoch=1)
    DataFitCheck().setup(trainer, None, "fit")
    assert trainer.val_check_interval == 31
    assert ("trainer.val_check_interval=128 batches is longer than an epoch (31 batches per device): "
            "validating every 31 batches instead") in capsys.readouterr().out
    trainer.val_check_interval, trainer.check_val_every_n_epoch = 128, None  # counted across epochs: kept
    DataFitCheck().setup(trainer, None, "fit")
    assert trainer.val_check_interval == 128
