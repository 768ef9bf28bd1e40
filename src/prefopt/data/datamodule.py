"""The Lightning DataModule: tokenizes preference rows once and serves collated pair batches.

`setup()` tokenizes train and eval rows (see tokenize.py), drops pairs whose responses truncation
leaves empty and chat rows whose role headers alone exceed max_prompt_length, and records counts in
`self.stats`. Each item carries `index`, its position in its
tokenized dataset, which the collated batch passes on as keys for cached log-probs. The train loader
shuffles with a generator seeded by `seed` (same seed, same order), optionally grouping pairs of like
lengths (`group_by_length`) under a padded-token budget per batch (`max_tokens_per_batch`), see
sampler.py; the eval loader keeps order. `marginal_context` ("start_token", "none", or None for no
marginal rows) is the marginal rows' context as the loss declares it (the run passes the loss's
`marginal_context` when it `needs_marginal`, else None; prefopt.scoring.marginal), `no_prompt_marker` what
follows their start token. `layout` is the run's `LayoutChoice` (prefopt.scoring.layout): the batches
carry the tensors of its layouts only (collate.py). A validation split of fewer than
`MIN_EVAL_PAIRS` pairs is a warning naming the key that sizes it (its val/* metrics would be noise).
Exercised by `pytest tests/data/test_datamodule.py` and every `python src/run.py`.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from prefopt.store import memo
from prefopt.data.collate import PairCollator
from prefopt.data.errors import DataError
from prefopt.data.sampler import ResumableLoader
from prefopt.data.tokenize import PreEncoded, PromptTooLong, encode_row, truncate_pair
from prefopt.log import get_logger
from prefopt.scoring.layout import LayoutChoice
from prefopt.scoring.marginal import MarginalRows

PROGRESS_MIN_ROWS = 1000
MIN_EVAL_PAIRS = 8  # fewer validation pairs than this: val/* metrics are too noisy to read (a warning)
log = get_logger()


class PairDataset(Dataset):
    """A list of tokenized pairs {prompt_ids, chosen_ids, rejected_ids, index, row}."""

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def tokenize_rows(
    rows: list[dict], tokenizer: Any, max_length: int, max_prompt_length: Optional[int], split: str,
    strict: bool = False,
    append_eos: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tokenize rows; return the kept items (with `index` and source `row`) and this split's stats.

    A pair whose response truncation would empty, or a chat prompt whose role headers alone exceed
    `max_prompt_length` (tokenize.py), is dropped and counted, or with `strict` an error.
    """
    items: list[dict[str, Any]] = []
    cut_prompts = cut_responses = too_long = 0
    show = len(rows) > PROGRESS_MIN_ROWS
    tokenizer = PreEncoded(tokenizer, rows)  # string rows: one batched encode of all their texts
    for i, row in enumerate(tqdm(rows, desc=f"tokenizing {split}", disable=None if show else True)):
        try:
            ids = encode_row(row, tokenizer, append_eos, max_prompt_length)
        except PromptTooLong as e:
            if strict:
                raise DataError(f"{split} row {i + 1}: {e} (data.strict=true makes this an error)") from e
            too_long += 1
            continue
        except DataError as e:
            raise DataError(f"{split} row {i + 1}: {e}") from e
        except Exception as e:  # noqa: BLE001 - e.g. a chat template rejecting the message order
            raise DataError(f"{split} row {i + 1}: could not tokenize ({type(e).__name__}: {e})") from e
        item = truncate_pair(*ids[:3], max_length, max_prompt_length, tokenizer.bos_token_id)
        if item is None:
            if strict:
                raise DataError(
                    f"{split} row {i + 1}: truncation to max_length={max_length} (max_prompt_length="
                    f"{max_prompt_length}) leaves no response token (data.strict=true makes this an error)"
                )
            continue
        cut_prompts += ids.prompt_cut or len(item["prompt_ids"]) < len(ids[0])
        cut_responses += (len(item["chosen_ids"]) < len(ids[1])) + (len(item["rejected_ids"]) < len(ids[2]))
        items.append({**item, "index": len(items), "row": i})
    n = max(len(items), 1)
    stats = {
        f"{split}/rows": len(rows),
        f"{split}/pairs": len(items),
        f"{split}/dropped_truncated": len(rows) - len(items) - too_long,
        f"{split}/dropped_prompt_too_long": too_long,
        f"{split}/truncated_prompts": cut_prompts,
        f"{split}/truncated_responses": cut_responses,
        f"{split}/mean_prompt_tokens": sum(len(it["prompt_ids"]) for it in items) / n,
        f"{split}/mean_response_tokens": sum(len(it["chosen_ids"]) + len(it["rejected_ids"]) for it in items) / (2 * n),
    }
    return items, stats


def start_and_pad_ids(tokenizer: Any) -> tuple[int, int]:
    """The marginal pass's start token (BOS, else EOS) and the padding id (pad, else EOS, else 0)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise DataError("the tokenizer has neither a BOS nor an EOS token to start a response-only sequence")
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    return start, pad


def small_eval_warning(n: int) -> str:
    """The warning line for a validation split of `n` < MIN_EVAL_PAIRS pairs."""
    pairs = f"only {n} validation pair{'s' if n > 1 else ''} (fewer than {MIN_EVAL_PAIRS})"
    what = "no validation pairs: no val/* metrics" if n == 0 else f"{pairs}: val/* metrics will be mostly noise"
    return (f"warning: {what}; raise data.source.eval_fraction (the share of pairs held out for validation; "
            "with data.source.eval_split set, that split has too few rows)")


class PreferenceDataModule(L.LightningDataModule):
    """Tokenized preference pairs for training (shuffled, seeded) and evaluation (in order)."""

    def __init__(
        self,
        train_rows: list[dict],
        eval_rows: list[dict],
        tokenizer: Any,
        max_length: int,
        max_prompt_length: Optional[int],
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        num_workers: int = 0,
        no_prompt_marker: str = "",
        marginal_context: Optional[str] = "start_token",
        strict: bool = False,
        append_eos: bool = True,
        group_by_length: bool = False,
        max_tokens_per_batch: Optional[int] = None,
        layout: Optional[LayoutChoice] = None,
    ):
        super().__init__()
        if max_length < 2 or (max_prompt_length is not None and max_prompt_length < 1):
            raise DataError(
                f"need max_length >= 2 and max_prompt_length >= 1 (or None), got max_length={max_length}, "
                f"max_prompt_length={max_prompt_length}"
            )
        self.train_rows, self.eval_rows = train_rows, eval_rows
        self.tokenizer = tokenizer
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.num_workers, self.strict, self.append_eos = seed, num_workers, strict, append_eos
        self.group_by_length, self.max_tokens_per_batch = group_by_length, max_tokens_per_batch
        start, pad = start_and_pad_ids(tokenizer)
        marginal = (None if marginal_context is None else  # the marginal rows the loss asks for, if any
                    MarginalRows.for_tokenizer(tokenizer, start, marginal_context, no_prompt_marker))
        self.collator = PairCollator(pad_id=pad, layout=layout, marginal=marginal)
        self.train_dataset: Optional[PairDataset] = None
        self.eval_dataset: Optional[PairDataset] = None
        self.stats: dict[str, Any] = {}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_dataset is not None:  # tokenize once, whatever the stage
            return
        args = (self.tokenizer, self.max_length, self.max_prompt_length)
        opts = dict(strict=self.strict, append_eos=self.append_eos)

        def tokenized(rows: list[dict], split: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            # once per process for the same rows and settings: a sweep's runs share it (prefopt/store/memo.py)
            return memo.tokenized(lambda: tokenize_rows(rows, *args, split=split, **opts), rows, self.tokenizer,
                                  split, self.max_length, self.max_prompt_length, self.strict, self.append_eos)

        train, train_stats = tokenized(self.train_rows, "train")
        evals, eval_stats = tokenized(self.eval_rows, "eval")
        if not train:
            raise DataError(
                f"all {len(self.train_rows)} train rows were dropped: truncation to max_length="
                f"{self.max_length} (max_prompt_length={self.max_prompt_length}) left no response tokens"
            )
        self.train_dataset, self.eval_dataset = PairDataset(train), PairDataset(evals)
        self.stats = {**train_stats, **eval_stats}
        if len(evals) < MIN_EVAL_PAIRS:
            log.warning(small_eval_warning(len(evals)))

    def loader(self, split: str, shuffle: bool = False, batch_size: Optional[int] = None) -> DataLoader:
        """A loader over `split` ("train" or "eval"); in order unless `shuffle` (seeded by `seed`)."""
        self.setup()
        dataset = self.train_dataset if split == "train" else self.eval_dataset
        size = batch_size or (self.batch_size if split == "train" else self.eval_batch_size)
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Seeded per-epoch order; after a restart, resumes exactly after the batches already trained on."""
        self.setup()
        trainer = getattr(self, "trainer", None)
        loader = ResumableLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            seed=self.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world=trainer.world_size if trainer is not None else 1,
            lengths=self.train_lengths() if self.group_by_length or self.max_tokens_per_batch else None,
            group_by_length=self.group_by_length,
            max_tokens=self.max_tokens_per_batch,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
        if trainer is not None and trainer.global_step > 0:
            loader.resume_from(trainer.global_step * trainer.accumulate_grad_batches)
        return loader

    def train_lengths(self) -> list[tuple[int, int, int]]:
        """(prompt, chosen, rejected) token counts of every train pair, in dataset order."""
        self.setup()
        return [(len(it["prompt_ids"]), len(it["chosen_ids"]), len(it["rejected_ids"])) for it in self.train_dataset]

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return self.loader("eval") if len(self.eval_dataset) else []
