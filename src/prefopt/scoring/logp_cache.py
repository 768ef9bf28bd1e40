"""Log-probs of the frozen starting policy, computed once per (weights, data, tokenization) and cached.

DPO and IPO need reference log-probs, RMiPO with `marginal=reference` the prompt-free marginal ones;
both come from the starting policy, which never changes, so one no-gradient pass over the train and
eval pairs (in batches of similar length) serves every run that shares it (a β sweep computes them
once). The cache lives in `<cache_dir>/logps/<kind>-<key>/{train,eval}.safetensors` (tables `logps`,
`tokens`: (N, 2) for [chosen, rejected] of pair index 0..N-1; checksummed and verified on use by
prefopt.store.cache, and checked to hold one row per pair); the key is a fingerprint of the
starting policy's tensors and config, the tokenized pairs (ids, in order), the truncation settings,
the marginal rows' context (their start tokens, or none) and the numeric precision. A run that finds
the tables (or has just built them) serves the loss from them and drops the frozen reference model
before training.

`attach_caches` is called when fit starts (by prefopt.train.logp_caches.LogpCaches, the Trainer
callback the run adds): the tables are built with, and handed to, the module's
prefopt.scoring.frozen.FrozenScorers (which kinds, which starting policy, whether prompts are shared
all come from it). In a data-parallel run (DDP, FSDP,
DeepSpeed) each rank scores its share of the pairs, the shares are summed across ranks and rank 0
writes the tables once. `cfg.logp_cache` (default true) switches it; the callback reports what it did
(`report`, and its `on_report` hook), which results.json keeps as `info.logp_cache` (enabled, used,
per-table status `hit` or `built`, key, seconds, ranks). Exercised by `python src/run.py loss=dpo`
(twice: the second run says `hit`) and `pytest tests/test_logp_cache.py tests/test_scale.py`.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from prefopt.store.cache import artifact_problem, cached_dir, fingerprint
from prefopt.errors import CacheError
from prefopt.log import get_logger
from prefopt.contracts.fingerprints import weights_fingerprint
from prefopt.scoring.layout import pair_batch_logps
from prefopt.scoring.logps import batch_plan, response_logps
from prefopt.scoring.sharing import settle_sharing

log = get_logger()
FORMAT_VERSION = 1  # bump when what a table holds (or how it is computed) changes
SPLITS = ("train", "eval")


def pairs_fingerprint(items: Iterable[dict[str, Any]]) -> str:
    """Digest of tokenized pairs in order: prompt, chosen and rejected ids of each."""
    digest = hashlib.sha256()
    count = 0
    for item in items:
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            ids = np.asarray(item[key], dtype=np.int64)
            digest.update(np.int64(ids.size).tobytes())
            digest.update(ids.tobytes())
        count += 1
    digest.update(str(count).encode())
    return digest.hexdigest()[:16]


def numeric_context(precision: str, device: torch.device):
    """(autocast context, weight dtype) matching a Lightning `trainer.precision` for the frozen pass."""
    precision = str(precision)
    half = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
    if half is not None and precision.endswith("mixed"):
        return torch.autocast(device.type, dtype=half), None
    if half is not None and precision.endswith("true"):
        return nullcontext(), half
    if precision.startswith("64"):
        return nullcontext(), torch.float64
    return nullcontext(), None


def cache_key(kind: str, weights: str, data: Any, precision: str) -> str:
    """The fingerprint one table set is stored under (everything its numbers depend on)."""
    parts: dict[str, Any] = dict(
        version=FORMAT_VERSION,
        kind=kind,
        weights=weights,
        train=pairs_fingerprint(data.train_dataset),
        eval=pairs_fingerprint(data.eval_dataset),
        max_length=data.max_length,
        max_prompt_length=data.max_prompt_length,
        precision=str(precision),
    )
    if kind == "marginal":  # what the marginal rows put before the response ([] with marginal_context=none)
        rows = data.collator.marginal
        parts["start_ids"] = list(rows.start_ids)
        if rows.context != "start_token":  # (start_token tables keep their earlier keys)
            parts["marginal_context"] = rows.context
    return fingerprint(parts)


@torch.no_grad()
def compute_table(model: torch.nn.Module, loader: Iterable[dict[str, Tensor]], n_pairs: int, kind: str,
                  device: torch.device, autocast=None, share_prompt: bool | str = "auto") -> tuple[Tensor, Tensor]:
    """(logps, tokens), each (n_pairs, 2) [chosen, rejected], from one pass over `loader` (any order);
    pairs the loader does not reach keep logps NaN and tokens -1. Reference rows run each prompt once
    when `share_prompt` says so (see prefopt.scoring.sharing.settle_sharing)."""
    logps = torch.full((n_pairs, 2), float("nan"))
    tokens = torch.full((n_pairs, 2), -1, dtype=torch.long)
    with autocast or nullcontext():
        for batch in loader:
            index = batch["index"]
            b = index.shape[0]
            batch = {k: v.to(device) for k, v in batch.items()}
            if kind == "reference":
                share_prompt = settle_sharing(model, batch, share_prompt)
                sums, counts = pair_batch_logps(model, batch, share_prompt)
            else:
                sums, counts = response_logps(model, batch["marginal_input_ids"], batch["marginal_attention_mask"],
                                              batch["marginal_score_mask"], plan=batch_plan(batch, "marginal_"))
            sums, counts = sums.float().cpu(), counts.cpu()
            logps[index] = torch.stack([sums[:b], sums[b:]], dim=1)
            tokens[index] = torch.stack([counts[:b], counts[b:]], dim=1)
    return logps, tokens


class LocalCollective:
    """The collective calls `attach_caches` makes, for a single process (a Lightning strategy has the
    same methods and does them across ranks)."""

    world_size, global_rank = 1, 0

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: str | None = None) -> None:
        pass

    def reduce(self, tensor: Tensor, reduce_op: str = "sum") -> Tensor:
        return tensor


def merge_shards(tables: dict[str, tuple[Tensor, Tensor]], collective: Any, device: torch.device, kind: str):
    """Each rank filled its shard of the pairs: sum the tables across ranks (a pair is filled by exactly
    one rank) and check that every pair was reached."""
    merged = {}
    for split, (logps, tokens) in tables.items():
        filled = tokens >= 0
        summed = collective.reduce(torch.where(filled, logps.double(), 0.0).to(device), reduce_op="sum")
        counts = collective.reduce((tokens + 1).to(device), reduce_op="sum") - 1
        if counts.numel() and bool((counts < 0).any()):
            raise RuntimeError(f"the {kind} pass did not reach every pair index of the {split} split")
        merged[split] = (summed.float().cpu(), counts.long().cpu())
    return merged


def device_of(cfg: Any) -> torch.device:
    accelerator = str(cfg.get("trainer", {}).get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _save(out: Path, tables: dict[str, tuple[Tensor, Tensor]]) -> dict[str, int]:
    """Write the tables; returns the pair count of each file (recorded in the cache manifest)."""
    from safetensors.torch import save_file

    for split, (logps, tokens) in tables.items():
        save_file({"logps": logps.contiguous(), "tokens": tokens.contiguous()}, str(out / f"{split}.safetensors"))
    return {f"{split}.safetensors": int(logps.shape[0]) for split, (logps, _) in tables.items()}


def _load(folder: Path, split: str, n_pairs: int) -> tuple[Tensor, Tensor]:
    """The (logps, tokens) table of `split`, checked to hold one row per pair of the split."""
    from safetensors.torch import load_file

    path = folder / f"{split}.safetensors"
    tensors = load_file(str(path))
    logps, tokens = tensors["logps"], tensors["tokens"]
    if logps.shape[0] != n_pairs or tokens.shape[0] != n_pairs:
        raise CacheError(f"{path} holds {logps.shape[0]} rows for the {n_pairs} pairs of the {split} split; "
                         f"delete {folder} to rebuild it")
    return logps, tokens


def length_sorted_loader(dataset: Any, collator: Any, batch_size: int, shard: tuple[int, int] = (0, 1)):
    """Batches of pairs of similar lengths (less padding); the tables are filled by pair index.
    `shard=(rank, world)`: this rank's share, every world-th pair in length order (equal work per rank)."""
    def length(i: int) -> int:
        item = dataset[i]
        return len(item["prompt_ids"]) + max(len(item["chosen_ids"]), len(item["rejected_ids"]))

    rank, world = shard
    order = sorted(range(len(dataset)), key=length)[rank::world]
    return DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False, collate_fn=collator)


def build_tables(model: torch.nn.Module, data: Any, kind: str, device: torch.device, precision: str,
                 shard: tuple[int, int] = (0, 1), share_prompt: bool | str = "auto"):
    """Tables of every split for `kind`, computed with `model` (the frozen starting policy), over this
    rank's `shard` of the pairs (the rest NaN / -1 until `merge_shards`).

    The model is left as it was (device, dtype, mode): a half-precision pass runs on a converted copy.
    """
    autocast, dtype = numeric_context(precision, device)
    home = next(model.parameters()).device
    was_training = model.training
    convert = dtype is not None and next(model.parameters()).dtype != dtype
    scorer = copy.deepcopy(model).to(dtype) if convert else model
    scorer.eval().to(device)
    batch_size = max(data.batch_size, data.eval_batch_size)
    tables = {}
    try:
        for split in SPLITS:
            dataset = data.train_dataset if split == "train" else data.eval_dataset
            loader = length_sorted_loader(dataset, data.collator, batch_size, shard)
            tables[split] = compute_table(scorer, loader, len(dataset), kind, device, autocast, share_prompt)
    finally:
        if scorer is model:
            model.to(home).train(was_training)
    return tables


def _tables_folder(root: Path, kind: str, key: str, compute: Any, collective: Any) -> tuple[Path, str]:
    """(folder of the tables, "hit" | "built"). One process builds under the cache lock (parallel jobs
    wait for it); data-parallel ranks each compute their shard, and rank 0 writes the merged tables."""
    name = f"{kind}-{key}"
    if collective.world_size == 1:
        built: list[bool] = []
        folder = cached_dir(root, "logps", name, lambda out: built.append(True) or _save(out, compute()))
        return folder, "built" if built else "hit"
    final = Path(root) / "logps" / name
    if not collective.broadcast(artifact_problem(final) is not None):  # missing or damaged: rebuild
        return final, "hit"
    tables = compute()  # every rank takes part: the merge is a collective
    if collective.global_rank == 0:
        cached_dir(root, "logps", name, lambda out: _save(out, tables))
    collective.barrier("prefopt-logp-cache")
    return final, "built"


def _attach_kind(frozen: Any, kind: str, weights: str, data: Any, cache_root: Path, collective: Any,
                 device: torch.device, precision: str, scorer: torch.nn.Module) -> dict[str, Any]:
    """Build (or find) the tables of one `kind`, hand them to `frozen`; returns their facts."""
    t0 = time.time()
    shard = (collective.global_rank, collective.world_size)
    key = cache_key(kind, weights, data, precision)

    def compute() -> dict[str, tuple[Tensor, Tensor]]:
        if collective.global_rank == 0:
            log.info(f"computing {kind} log-probs of the starting policy once (cache key {key}"
                     f"{f', split over {shard[1]} ranks' if shard[1] > 1 else ''})")
        tables = build_tables(scorer, data, kind, device, precision, shard, frozen.table_sharing)
        return merge_shards(tables, collective, device, kind)

    folder, status = _tables_folder(cache_root, kind, key, compute, collective)
    for split in SPLITS:
        dataset = data.train_dataset if split == "train" else data.eval_dataset
        logps, tokens = _load(folder, split, len(dataset))
        frozen.use_table(kind, split, logps, tokens)
    facts = {"status": status, "key": key, "seconds": round(time.time() - t0, 3), "ranks": shard[1]}
    if collective.global_rank == 0:
        log.info(f"{kind} log-probs: {'cache hit' if status == 'hit' else 'computed and cached'} ({folder})")
    return facts


def attach_caches(cfg: Any, frozen: Any, data: Any, cache_root: Path, collective: Any = None,
                  device: torch.device | None = None) -> dict[str, Any]:
    """Serve the loss's frozen log-probs from on-disk tables (building them once) and drop the reference.

    `frozen`: a module's prefopt.scoring.frozen.FrozenScorers; the tables are built with its starting
    policy and handed to it. `collective` (a Lightning strategy
    in a data-parallel run) splits the build over the ranks.
    Returns {"logp_cache": {...}} for results.json: `enabled`, `used` (whether tables replace the frozen
    passes in this run), and per table kind its `status` (`hit` or `built`), `key`, `seconds`, `ranks`.
    """
    enabled = bool(cfg.get("logp_cache", True))
    info: dict[str, Any] = {"enabled": enabled, "used": False, "tables": {}}
    if not enabled or not frozen.kinds:
        info["reason"] = "logp_cache=false" if not enabled else "the loss needs no log-probs of the starting policy"
        return {"logp_cache": info}
    collective = collective or LocalCollective()
    data.setup()
    precision = str(cfg.get("trainer", {}).get("precision", "32-true"))
    device = device or device_of(cfg)
    started = time.time()
    with frozen.scorer() as scorer:
        weights = weights_fingerprint(scorer)
        for kind in frozen.kinds:
            info["tables"][kind] = _attach_kind(frozen, kind, weights, data, cache_root, collective, device,
                                                precision, scorer)
    info["used"] = True
    info["reference_released"] = frozen.release_reference()
    info["seconds"] = round(time.time() - started, 3)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"logp_cache": info}
