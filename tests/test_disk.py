"""The disk check before training (prefopt/store/disk.py, free space mocked; a resume counts only what is
new), how many checkpoints a run keeps and what a LoRA checkpoint holds (prefopt/train/checkpointing.py):
sizes worked out by hand for the helpers' tiny model, a one-line stop when a folder is short, and a LoRA
run resumed from its adapters-only checkpoint ending exactly where the uninterrupted run ends."""

import json
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from helpers import PAIRS, collated, tiny_model, optim
from prefopt.train import disk
from prefopt.train.checkpointing import TRIMMED, checkpoints_at_once
from prefopt.losses import DPOLoss
from prefopt.models.setup import apply_lora
from prefopt.train.module import PreferenceModule

# helpers.tiny_model(): vocab 32, hidden 32, 1 layer, MLP 64, tied embeddings, float32:
# embeddings 32·32 = 1024; q, k, v, o 4·32·32 = 4096; gate, up, down 3·32·64 = 6144; norms 3·32 = 96
TINY_PARAMS = 1024 + 4096 + 6144 + 96  # 11,360
# LoRA r=4 on every linear layer of the block: q, k, v, o 4·(4·32 + 32·4) = 1024; gate, up 2·(4·32 + 64·4) = 768;
# down 4·64 + 32·4 = 384
LORA_PARAMS = 1024 + 768 + 384  # 2,176
LORA = OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
Usage = namedtuple("Usage", "total used free")


def cfg(enabled=True, every=0, keep=2, logp_cache=True):
    return OmegaConf.create({"checkpoint": {"enabled": enabled, "every_n_train_steps": every, "keep": keep},
                             "logp_cache": logp_cache, "data": {"batch_size": 2}})


def test_checkpoints_at_once():
    # + 1 throughout: the temporary file a checkpoint is written to before it replaces the old one
    assert checkpoints_at_once(cfg(enabled=False), 478) == 0
    assert checkpoints_at_once(cfg(every=0), 478) == 1 + 1                 # last.ckpt only
    # mistral7b: 478 steps, one every 100 -> 4 periodic; keep 2 (+1 while the next one is written) + last
    assert checkpoints_at_once(cfg(every=100, keep=2), 478) == 1 + 1 + 3
    assert checkpoints_at_once(cfg(every=100, keep=-1), 478) == 1 + 1 + 4
    assert checkpoints_at_once(cfg(every=100, keep=8), 478) == 1 + 1 + 4
    assert checkpoints_at_once(cfg(every=100, keep=2), 99) == 1 + 1


def test_sizes_from_the_policys_parameters():
    model = tiny_model()
    assert sum(p.numel() for p in model.parameters()) == TINY_PARAMS
    assert disk.checkpoint_bytes(model) == 4 * TINY_PARAMS * 3        # weights + AdamW's two moments, fp32
    assert disk.checkpoint_bytes(model, zero3=True) == 4 * TINY_PARAMS + 12 * TINY_PARAMS
    assert disk.model_bytes(tiny_model().to(torch.bfloat16)) == 2 * TINY_PARAMS
    lora = apply_lora(tiny_model(), LORA)
    assert disk.checkpoint_bytes(lora) == 4 * LORA_PARAMS * 3         # adapters only
    assert disk.model_bytes(lora) == 4 * TINY_PARAMS                  # merged: the base model's size
    est = disk.estimate(cfg(every=100), model, steps=478, pairs=1000)
    assert est.output_bytes == 5 * (12 * TINY_PARAMS) + 4 * TINY_PARAMS  # 4 checkpoints + 1 being written (12 B/param) + model/
    assert est.cache_bytes == 96 * 1000 + 16 * 2**20
    assert disk.estimate(cfg(every=100, logp_cache=False), model, 478, 1000).cache_bytes == 0


def test_total_steps_from_epochs():
    trainer = SimpleNamespace(max_steps=-1, max_epochs=1, world_size=8, accumulate_grad_batches=8)
    assert disk.total_steps(trainer, train_pairs=61135, batch_size=2) == 478   # ceil(ceil(61135 / 16) / 8)
    assert disk.total_steps(SimpleNamespace(max_steps=200), 10, 2) == 200


def test_short_output_folder_stops_in_one_line(tmp_path, monkeypatch):
    est = disk.DiskEstimate(checkpoint_bytes=58_000_000_000, checkpoints=4, model_bytes=14_500_000_000,
                            cache_bytes=10**6)
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: Usage(10**12, 0, 120 * 10**9))
    with pytest.raises(disk.DiskSpaceError) as err:
        disk.check(est, tmp_path / "outputs" / "run", tmp_path / "cache")  # the run folder need not exist yet
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"not enough disk space for {tmp_path / 'outputs' / 'run'}: the run writes about 246.5 GB "
                       "there (4 checkpoint(s) × 58.0 GB + model/ 14.5 GB) but 120.0 GB is free; set "
                       "checkpoint.keep=1 or checkpoint.enabled=false, free space, or write elsewhere (hydra.run.dir=...)")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: Usage(10**12, 0, 300 * 10**9))
    line = disk.check(est, tmp_path / "outputs" / "run", tmp_path / "cache")
    assert line == ("[prefopt] disk: about 246.5 GB to write (4 checkpoint(s) × 58.0 GB + model/ 14.5 GB), "
                    "300.0 GB free")


def test_cache_on_another_filesystem_is_checked_on_its_own(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "cache").mkdir()
    est = disk.DiskEstimate(checkpoint_bytes=10**6, checkpoints=1, model_bytes=10**6, cache_bytes=5 * 10**9)
    monkeypatch.setattr(disk, "same_filesystem", lambda a, b: False)
    monkeypatch.setattr(disk.shutil, "disk_usage",
                        lambda path: Usage(0, 0, 10**9 if str(path) == str(tmp_path / "cache") else 10**12))
    with pytest.raises(disk.DiskSpaceError, match=r"for .*cache: the run writes about 5.0 GB there "
                                                   r"\(log-prob caches\) but 1.0 GB is free; free space or set "
                                                   r"paths.cache_dir=..."):
        disk.check(est, tmp_path / "out", tmp_path / "cache")


def test_resume_counts_only_what_is_new(tmp_path, monkeypatch, capsys):
    """A resume finds last.ckpt and two periodic checkpoints in its folder: they are overwritten or rotated
    out, so only the fourth checkpoint and model/ are new writes (a fresh start counts all four)."""
    ckpt = 4 * TINY_PARAMS * 3                  # 136,320 B: fp32 weights + AdamW's two moments
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("last.ckpt", "epoch=0-step=100.ckpt", "epoch=0-step=200.ckpt"):
        with open(folder / name, "wb") as f:
            f.truncate(ckpt)
    (folder / "last.ckpt.sum").write_text("{}")  # not a checkpoint
    assert disk.existing_checkpoint_bytes(folder) == 3 * ckpt == 408_960
    # 478 steps, one every 100 -> 4 periodic; keep 2 (+1 while written) + last + 1 temporary = 5 at once:
    # 681,600 B; minus the 408,960 B already there = 272,640 B, + model/ 4 B × 11,360 = 45,440 B -> 318,080 B new
    est = disk.estimate(cfg(every=100, logp_cache=False), tiny_model(), steps=478, pairs=0, existing=3 * ckpt)
    assert (est.new_checkpoint_bytes, est.output_bytes) == (272_640, 318_080)
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: Usage(10**12, 0, 400_000))
    trainer = SimpleNamespace(max_steps=478, strategy=object(), is_global_zero=True)
    args = (cfg(every=100, logp_cache=False), trainer, tiny_model(), tmp_path / "run", tmp_path / "cache", 100)
    disk.check_disk_space(*args, resuming=True)
    assert capsys.readouterr().out.strip() == ("[prefopt] disk: about 0.3 MB to write (5 checkpoint(s) × 0.1 MB - "
                                               "0.4 MB already there + model/ 0.0 MB), 0.4 MB free")
    with pytest.raises(disk.DiskSpaceError, match=r"writes about 0.7 MB there \(5 checkpoint\(s\) × 0.1 MB \+"):
        disk.check_disk_space(*args)  # a fresh start: 5 × 136,320 + 45,440 = 727,040 B
    for name in ("epoch=0-step=300.ckpt", "epoch=0-step=400.ckpt"):  # 5 files: as many as the run has at once  # more than the run keeps: nothing is new
        with open(folder / name, "wb") as f:
            f.truncate(ckpt)
    assert disk.estimate(cfg(every=100, logp_cache=False), tiny_model(), 478, 0,
                         existing=disk.existing_checkpoint_bytes(folder)).output_bytes == 45_440


def lora_module(seed: int) -> PreferenceModule:
    torch.manual_seed(seed)  # a different adapter initialisation per seed
    return PreferenceModule(apply_lora(tiny_model(), LORA), DPOLoss(beta=0.1), **optim(lr=1e-3))


def test_lora_checkpoint_holds_adapters_and_loads_strictly():
    saved = lora_module(0)
    with torch.no_grad():
        for name, p in saved.policy.named_parameters():
            if p.requires_grad:
                p.add_(0.01)  # "trained" adapters
    checkpoint = {"state_dict": saved.state_dict()}
    saved.on_save_checkpoint(checkpoint)
    keys = checkpoint["state_dict"].keys()
    assert checkpoint[TRIMMED] and len(keys) == 2 * 7 and all(".lora_" in k for k in keys)  # A and B × 7 layers
    assert sum(v.numel() for v in checkpoint["state_dict"].values()) == LORA_PARAMS
    resumed = lora_module(1)
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"], strict=True)
    for (name, a), b in zip(saved.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    batch = collated(PAIRS)
    with torch.no_grad():
        assert torch.equal(saved.policy(input_ids=batch["input_ids"]).logits,
                           resumed.policy(input_ids=batch["input_ids"]).logits)


def test_full_checkpoint_is_untouched():
    module = PreferenceModule(tiny_model(), DPOLoss(beta=0.1), **optim(lr=1e-3))
    checkpoint = {"state_dict": module.state_dict()}
    policy_keys = {k for k in checkpoint["state_dict"] if k.startswith("policy.")}
    module.on_save_checkpoint(checkpoint)  # drops the reference copy, keeps every policy weight
    assert set(checkpoint["state_dict"]) == policy_keys and TRIMMED not in checkpoint


@pytest.mark.slow
def test_lora_run_resumes_from_its_adapter_checkpoint(cache_root, tmp_path):
    from test_run import SMALL_SORT, run_cli

    def metrics(run_dir):
        results = json.loads((run_dir / "results.json").read_text())
        assert results["status"] == "completed"
        return {k: v for k, v in results["metrics"].items() if not k.startswith("perf/")}

    args = [*SMALL_SORT, "loss=dpo", "model.lora.r=4", "trainer.max_steps=6", "logger=none",
            "checkpoint.every_n_train_steps=2", "checkpoint.keep=2"]
    full = run_cli([*args, f"hydra.run.dir={tmp_path / 'full'}"], cache_root, tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    assert "[prefopt] disk: about" in full.stdout and "attention sdpa" in full.stdout
    ckpts = sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "last.ckpt"]  # keep=2 periodic + last
    state = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    policy_keys = [k for k in state if k.startswith("policy.")]
    assert policy_keys and all(".lora_" in k for k in policy_keys)
    resumed = run_cli([*args, f"ckpt_path='{tmp_path / 'full' / 'checkpoints' / 'epoch=0-step=4.ckpt'}'",
                       f"hydra.run.dir={tmp_path / 'resumed'}"], cache_root, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert metrics(tmp_path / "resumed") == metrics(tmp_path / "full")
