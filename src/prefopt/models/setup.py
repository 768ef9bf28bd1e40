"""Preparing a loaded policy for training and saving it afterwards: gradient checkpointing, LoRA, dropout.

`prepare_for_training` applies `model.gradient_checkpointing` and `model.lora` (peft); with LoRA only the
adapter weights train, and the reference policy is the same model with its adapters disabled (no second
copy in memory). `model.disable_dropout` (default true, as TRL) sets every dropout probability of the
policy to 0, LoRA's included, so log-ratios and RMiPO's δ carry no dropout noise. `model.chunked_head` marks
the LM head for prefopt.scoring.chunked_head (the scored tokens' log-probs without the full logits).
`save_policy` writes a plain Hugging Face folder (LoRA merged into the weights) that
`AutoModelForCausalLM.from_pretrained` loads as is, whole or not at all. Used by `prefopt.run.runner`; exercised by
`pytest tests/test_dropout.py tests/test_lora.py tests/test_late_failures.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prefopt.contracts.predicates import is_lora  # noqa: F401 (re-exported)
from prefopt.errors import ConfigError


def apply_lora(model: torch.nn.Module, lora: Any) -> torch.nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("model.lora.r is set but peft is not installed: pip install peft") from None
    targets = lora.get("target_modules", "all-linear")
    config = LoraConfig(
        r=int(lora.r),
        lora_alpha=float(lora.get("alpha") or 2 * int(lora.r)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=list(targets) if not isinstance(targets, str) else targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability in `model` to 0: `nn.Dropout` modules (LoRA's `lora_dropout` among
    them) and the float `*dropout*` attributes attention layers pass to their kernels while training
    (e.g. `attention_dropout`). The saved config keeps its values. Returns how many were non-zero."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            changed += module.p != 0
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name.lower() and isinstance(value, float) and not isinstance(value, bool):
                changed += value != 0
                setattr(module, name, 0.0)
    return int(changed)


def prepare_for_training(model: torch.nn.Module, model_cfg: Any) -> torch.nn.Module:
    if model_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    from prefopt.scoring.chunked_head import enable_chunked_head

    enable_chunked_head(model, model_cfg.get("chunked_head", "auto"))  # before LoRA: the base model's head
    lora = model_cfg.get("lora")
    if lora and lora.get("r"):
        model = apply_lora(model, lora)
    if model_cfg.get("disable_dropout", True):
        disable_dropout(model)
    return model


def save_policy(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    """A plain HF folder; LoRA adapters are merged into the base weights first. Written beside `folder` and
    renamed into place when complete (prefopt.store.atomic): a failure or a signal midway leaves no
    `folder` with weights but no tokenizer, and an earlier complete one as it was."""
    from prefopt.store.atomic import replace_folder

    if is_lora(model):
        model = model.merge_and_unload()

    def fill(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    replace_folder(folder, fill)
