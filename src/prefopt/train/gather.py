"""The trained policy as one plain model on rank 0 after a sharded run (FSDP, DeepSpeed ZeRO-3).

After such a fit the policy's parameters are spread over the ranks, so rank 0 alone can neither
generate with it nor save it. `full_policy_state(trainer)` is a collective (every rank calls it) that
gathers the policy's full state dict onto rank 0's CPU (torch's `get_model_state_dict` with a full,
CPU-offloaded state dict for FSDP; `deepspeed.zero.GatheredParameters` for ZeRO-3); `rebuild_policy`
loads it into a freshly loaded starting policy (LoRA applied the same way), which the evaluation,
the generation export and `save_policy` then use. Called by `prefopt.run.steps.trained_policy` after the fit.
Tested on CPU: which strategies count as sharded and the rebuild; the gathering itself needs GPUs
(Lightning's FSDP refuses a CPU, and torch's FSDP crashes on CPU/gloo here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefopt.contracts.predicates import is_sharded  # noqa: F401 (re-exported)

PREFIX = "policy."


def policy_entries(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The policy's tensors of a PreferenceModule state dict, named as in the policy itself."""
    return {key[len(PREFIX):]: value for key, value in state.items() if key.startswith(PREFIX)}


def full_policy_state(trainer: Any) -> dict[str, Tensor] | None:
    """Collective: gather the trained policy's full state dict; rank 0 gets it (CPU), others None."""
    strategy, module = trainer.strategy, trainer.lightning_module
    if type(strategy).__name__.startswith("FSDP"):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets it, others {}
        state = get_model_state_dict(strategy.model, options=options)
    else:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.policy.parameters()), modifier_rank=None):
            state = {}
            if strategy.global_rank == 0:
                state = {PREFIX + k: v.detach().cpu().clone() for k, v in module.policy.state_dict().items()}
    strategy.barrier("prefopt-gather-policy")
    return policy_entries(state) if strategy.global_rank == 0 else None


def rebuild_policy(fresh: torch.nn.Module, state: dict[str, Tensor]) -> torch.nn.Module:
    """Load a gathered policy state into `fresh` (same architecture and LoRA setup); a mismatch is an
    error naming the first differing tensors."""
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(getattr(fresh, "config", None), "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k.split("base_model.model.")[-1] not in tied]
    if missing or unexpected:
        raise RuntimeError(
            f"the gathered policy does not fit the reloaded model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}"
        )
    return fresh
