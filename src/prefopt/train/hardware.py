"""What a run computes on, in one line printed when training starts: device(s), precision, weight dtype and
attention implementation (flash_attention_2 only where flash-attn is installed on a GPU; see
`prefopt.models.load.attention_implementation`). `prefopt.run.runner` prints it; scripts/gpu_check.sh shows it per
loss. Exercised by `pytest tests/test_gpu_check.py`.
"""

from __future__ import annotations

from typing import Any

import torch


def attention_of(policy: torch.nn.Module) -> str:
    """The attention implementation transformers uses for this model (LoRA/peft wrappers looked through)."""
    config = getattr(policy, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def setup_line(trainer: Any, policy: torch.nn.Module) -> str:
    dtype = next(policy.parameters()).dtype
    return (f"[prefopt] device: {device_name(trainer.strategy.root_device)} × {trainer.world_size} process(es), "
            f"precision {trainer.precision}, weights {str(dtype).replace('torch.', '')}, "
            f"attention {attention_of(policy)}")
