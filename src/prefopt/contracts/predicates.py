"""Small predicates about models and strategies that several packages ask (contracts: no prefopt imports).

`is_lora(model)`: a peft (LoRA) model; `is_sharded(strategy)`: a Lightning strategy whose parameters are
split across ranks after fit. Exercised by `pytest tests/test_lora.py tests/test_gather.py`.
"""

from __future__ import annotations

from typing import Any


def is_lora(model: Any) -> bool:
    """Whether `model` is a peft (LoRA) model: it can disable its adapters."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def is_sharded(strategy: Any) -> bool:
    """Whether the policy's parameters are split across ranks after fit (FSDP, DeepSpeed stage 3)."""
    name = type(strategy).__name__
    if name.startswith("FSDP"):
        return True
    return name.startswith("DeepSpeed") and bool(getattr(strategy, "zero_stage_3", False))
