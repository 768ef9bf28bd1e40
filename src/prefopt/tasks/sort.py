"""The embedded `sort` task: tokenizer, SFT starting policy and judge-labelled pairs, cached by fingerprint.

`SortTask.build` trains a tiny Llama on noisy sorting demonstrations (see sort_oracle.DEMO_MIX),
samples pairs of answers from it, labels them with the length-biased judge, and returns them with
held-out prompts and the gold oracle. Both artifacts live in the prefopt cache keyed by every
setting they depend on, so a sweep builds them once; the cache verifies their checksums and the pair
count on every use (tests/test_cache_faults.py). Exercised by `python src/run.py data=sort`
and `pytest tests/tasks/test_sort_task.py`.
"""

from __future__ import annotations

import json
import random
import time
from itertools import combinations
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from prefopt.store.cache import cached_dir, fingerprint
from prefopt.eval.generation import sample
from prefopt.log import get_logger
from prefopt.contracts.task import StartNeeds, Task, TaskArtifacts
from prefopt.models.load import build_tiny
from prefopt.tasks.sft import train_causal_lm
from prefopt.tasks.base import Built, check_pair_sampling, load_pairs_split, mean
from prefopt.tasks.sort_oracle import (
    DIGITS, SEPARATOR, SortOracle, demonstration, judge_pair, make_prompts, oracle_reward,
    prompt_string,
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
ARTIFACT_VERSION = 1  # bump when the build code changes what an artifact contains


def build_sort_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: <pad>=0 <s>=1 </s>=2 <unk>=3, digits 4-13, separator '>'=14.

    Single sequences get BOS prepended (post-processor); decoding concatenates characters.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(DIGITS) + [SEPARATOR])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def sft_sequences(
    tok: PreTrainedTokenizerFast, digits: list[str], responses: list[str], dropped: list[bool]
) -> list[list[int]]:
    """Token ids of SFT examples: BOS digits '>' response EOS, or BOS '>' response EOS if dropped."""
    prompts = [prompt_string("" if drop else x) for x, drop in zip(digits, dropped)]
    prompt_ids = tok(prompts)["input_ids"]
    response_ids = tok(responses, add_special_tokens=False)["input_ids"]
    return [p + r + [tok.eos_token_id] for p, r in zip(prompt_ids, response_ids)]


log = get_logger("sort")


class SortTask(Task):
    """Sort 5-10 digits; pairs labelled by a judge biased toward long answers.

    Args (defaults: the pilot that worked; whole build about a minute on one core):
        n_sft: number of SFT demonstrations (noisy, see sort_oracle.DEMO_MIX).
        sft_steps, sft_lr, sft_batch_size: the SFT AdamW loop (warmup + cosine).
        prompt_drop: share of SFT examples trained without their digits (BOS, separator, response),
            so the policy's marginal pi(y | BOS '>') is a meaningful prompt-free distribution.
        n_pair_prompts: prompts to sample pairs for (the last eval_fraction of them give eval_rows).
        samples_per_prompt: responses sampled per prompt (>= 2); every two distinct ones form a pair.
        judge_bias: b in the judge's r~ = r* + b * len(y) / len(x).
        judge_temperature: t in P(a preferred to b) = sigmoid((r~_a - r~_b) / t).
        n_eval_prompts: held-out prompts for the generation evaluation (disjoint from all others).
        eval_fraction: share of the pair prompts whose pairs are returned as eval_rows.
        max_new_tokens: sampling limit for pairs and evaluation (answers are at most 13 digits + EOS).
        min_digits, max_digits: prompt length range.
        seed: fixes prompts, demonstrations, model init, SFT order, samples and judge draws.
        sample_batch_size: batch size for sampling pairs (speed only; the draws depend on it).
    """

    name = "sort"
    # what stands for "no prompt" to its policy: prompt-less SFT examples were BOS '>' response EOS (read by
    # prefopt.scoring.marginal.no_prompt_marker for a marginal pass after the start token)
    no_prompt_marker = SEPARATOR
    needs = StartNeeds(  # its character tokenizer is read by its own SFT policy only
        builds_start=True, takes_pretrained=False,
        instead="To train another model on sort pairs, use data=jsonl data.path=<the task's pairs.jsonl in the cache>.",
    )

    def __init__(
        self,
        n_sft: int = 20000,
        sft_steps: int = 700,
        sft_lr: float = 3e-3,
        sft_batch_size: int = 64,
        prompt_drop: float = 0.1,
        n_pair_prompts: int = 8000,
        samples_per_prompt: int = 2,
        judge_bias: float = 0.3,
        judge_temperature: float = 0.1,
        n_eval_prompts: int = 256,
        eval_fraction: float = 0.05,
        max_new_tokens: int = 16,
        min_digits: int = 5,
        max_digits: int = 10,
        seed: int = 0,
        sample_batch_size: int = 256,
    ):
        check_pair_sampling(samples_per_prompt, eval_fraction)
        if not 0.0 <= prompt_drop < 1.0:
            raise ValueError(f"prompt_drop must be in [0, 1), got {prompt_drop}")
        if judge_temperature <= 0:
            raise ValueError(f"judge_temperature must be positive, got {judge_temperature}")
        self.n_sft, self.sft_steps, self.sft_lr = n_sft, sft_steps, sft_lr
        self.sft_batch_size, self.prompt_drop = sft_batch_size, prompt_drop
        self.n_pair_prompts, self.samples_per_prompt = n_pair_prompts, samples_per_prompt
        self.judge_bias, self.judge_temperature = judge_bias, judge_temperature
        self.n_eval_prompts, self.eval_fraction = n_eval_prompts, eval_fraction
        self.max_new_tokens, self.min_digits, self.max_digits = max_new_tokens, min_digits, max_digits
        self.seed, self.sample_batch_size = seed, sample_batch_size

    # ---- what each artifact depends on -------------------------------------------------------
    def sft_key(self, arch: dict[str, Any]) -> str:
        return fingerprint(
            "sort-sft", ARTIFACT_VERSION, arch, self.n_sft, self.sft_steps, self.sft_lr,
            self.sft_batch_size, self.prompt_drop, self.min_digits, self.max_digits, self.seed,
        )

    def pairs_key(self, sft_key: str) -> str:
        return fingerprint(
            "sort-pairs", ARTIFACT_VERSION, sft_key, self.n_pair_prompts, self.samples_per_prompt,
            self.judge_bias, self.judge_temperature, self.max_new_tokens, self.min_digits,
            self.max_digits, self.seed, self.sample_batch_size,
        )

    def eval_prompts(self) -> list[str]:
        """Held-out prompt strings ("31415>"), from the evaluation hash bucket."""
        rng = random.Random(f"sort-eval-{self.seed}")
        digits = make_prompts(self.n_eval_prompts, rng, self.min_digits, self.max_digits, held_out=True)
        return [prompt_string(d) for d in digits]

    # ---- building ----------------------------------------------------------------------------
    def _sample_strings(self, model, tok, prompts: list[str], seed: int, desc: str) -> list[str]:
        ids = tok(prompts)["input_ids"]
        out = sample(model, tok, ids, self.max_new_tokens, 1.0, seed, self.sample_batch_size, desc)
        return tok.batch_decode(out, skip_special_tokens=True)

    def _policy_reward(self, model, tok, prompts: list[str]) -> float:
        responses = self._sample_strings(model, tok, prompts, self.seed, "sampling eval prompts")
        return mean(SortOracle()(prompts, responses))

    def _build_sft(self, out: Path, arch: dict[str, Any]) -> None:
        start = time.time()
        tok = build_sort_tokenizer()
        rng = random.Random(f"sort-sft-{self.seed}")
        digits = make_prompts(self.n_sft, rng, self.min_digits, self.max_digits)
        demos = [demonstration(x, rng) for x in digits]
        dropped = [rng.random() < self.prompt_drop for _ in digits]
        sequences = sft_sequences(tok, digits, [r for r, _ in demos], dropped)
        model = build_tiny(tok, **{"seed": self.seed, **arch})
        eval_prompts = self.eval_prompts()
        init_reward = self._policy_reward(model, tok, eval_prompts)
        layers, width = model.config.num_hidden_layers, model.config.hidden_size
        losses = train_causal_lm(
            model, sequences, self.sft_steps, self.sft_lr, self.sft_batch_size, self.seed,
            tok.pad_token_id, desc=f"SFT sort policy ({layers}-layer d={width})",
        )
        sft_reward = self._policy_reward(model, tok, eval_prompts)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        kinds = [k for _, k in demos]
        meta = {
            "demo_mix": {k: kinds.count(k) / len(kinds) for k in sorted(set(kinds))},
            "demo_oracle_reward": mean([oracle_reward(x, r) for x, (r, _) in zip(digits, demos)]),
            "prompt_dropped": sum(dropped) / len(dropped),
            "sft_final_loss": mean(losses[-50:]),
            "init_oracle_reward": init_reward,
            "sft_oracle_reward": sft_reward,
            "sft_seconds": time.time() - start,
        }
        (out / "sort_meta.json").write_text(json.dumps(meta, indent=1))

    def _build_pairs(self, out: Path, policy: Path) -> dict[str, int]:
        start = time.time()
        tok = AutoTokenizer.from_pretrained(policy)
        model = AutoModelForCausalLM.from_pretrained(policy)
        rng = random.Random(f"sort-pairs-{self.seed}")
        digits = make_prompts(self.n_pair_prompts, rng, self.min_digits, self.max_digits)
        k = self.samples_per_prompt
        prompts = [prompt_string(x) for x in digits for _ in range(k)]
        responses = self._sample_strings(model, tok, prompts, self.seed, "sampling sort pairs")
        rows, ties, agree, decided = [], 0, 0, 0
        for p, x in enumerate(digits):
            answers = responses[p * k: (p + 1) * k]
            for a, b in combinations(answers, 2):
                verdict = judge_pair(x, a, b, rng, self.judge_bias, self.judge_temperature)
                if verdict is None:
                    ties += 1
                    continue
                chosen, rejected = verdict
                rows.append({"prompt": prompt_string(x), "chosen": chosen, "rejected": rejected})
                gap = oracle_reward(x, chosen) - oracle_reward(x, rejected)
                if gap != 0:
                    decided += 1
                    agree += gap > 0
        with open(out / "pairs.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        meta = {
            "n_pairs": len(rows),
            "ties_dropped": ties,
            "judge_oracle_agreement": agree / decided if decided else float("nan"),
            "oracle_ties": len(rows) - decided,
            "sample_oracle_reward": mean([oracle_reward(x, r) for x, r in zip(
                [x for x in digits for _ in range(k)], responses)]),
            "sample_length": mean([len(r) for r in responses]),
            "pairs_seconds": time.time() - start,
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
        return {"pairs.jsonl": len(rows)}

    def _sft_policy(self, arch: dict[str, Any], cache_root: Path) -> tuple[Path, str, dict]:
        """(folder, key, meta) of the SFT starting policy (cached)."""
        sft_key = self.sft_key(arch)
        log.info(f"SFT policy {sft_key}: {self.n_sft} demos, {self.sft_steps} steps, tiny {arch or 'defaults'}")
        sft_build = Built(lambda d: self._build_sft(d, arch))
        policy = cached_dir(cache_root, "sort_sft", sft_key, sft_build)
        sft_meta = json.loads((policy / "sort_meta.json").read_text())
        log.info(
            f"SFT policy oracle reward {sft_meta['sft_oracle_reward']:.3f} on the eval prompts, sampled with the "
            f"task's seed (untrained {sft_meta['init_oracle_reward']:.3f}, demos "
            f"{sft_meta['demo_oracle_reward']:.3f}, perfect 1.0; a run's eval/oracle_reward_start samples the "
            f"same policy with the run's seed), {sft_build.origin(sft_meta['sft_seconds'], policy)}"
        )
        return policy, sft_key, sft_meta

    def _pairs(self, policy: Path, sft_key: str, cache_root: Path) -> tuple[Path, str, dict]:
        """(folder, key, meta) of the judge-labelled pairs sampled from the SFT policy (cached)."""
        pairs_key = self.pairs_key(sft_key)
        log.info(f"pairs {pairs_key}: {self.n_pair_prompts} prompts x {self.samples_per_prompt} samples")
        pairs_build = Built(lambda d: self._build_pairs(d, policy))
        pairs_dir = cached_dir(cache_root, "sort_pairs", pairs_key, pairs_build)
        meta = json.loads((pairs_dir / "meta.json").read_text())
        log.info(
            f"{meta['n_pairs']} pairs ({meta['ties_dropped']} ties dropped), judge agrees with oracle "
            f"on {meta['judge_oracle_agreement']:.1%} of pairs the oracle separates, "
            f"{pairs_build.origin(meta['pairs_seconds'], pairs_dir)}"
        )
        return pairs_dir, pairs_key, meta

    def build(self, start: Any, model_cfg: Any, cache_root: Path) -> TaskArtifacts:
        arch = start.architecture  # the task's own start (model=tiny only: `needs`), as the run chose it
        policy, sft_key, sft_meta = self._sft_policy(arch, cache_root)
        pairs_dir, pairs_key, meta = self._pairs(policy, sft_key, cache_root)
        train_rows, eval_rows = load_pairs_split(pairs_dir / "pairs.jsonl", self.eval_fraction, meta["n_pairs"])
        info = {
            "sort/sft_key": sft_key,
            "sort/pairs_key": pairs_key,
            "sort/n_pairs": meta["n_pairs"],
            "sort/n_train_rows": len(train_rows),
            "sort/n_eval_rows": len(eval_rows),
            "sort/ties_dropped": meta["ties_dropped"],
            "sort/judge_oracle_agreement": meta["judge_oracle_agreement"],
            "sort/sft_oracle_reward": sft_meta["sft_oracle_reward"],
            "sort/init_oracle_reward": sft_meta["init_oracle_reward"],
            "sort/pair_sample_oracle_reward": meta["sample_oracle_reward"],
        }
        return TaskArtifacts(
            train_rows=train_rows,
            eval_rows=eval_rows,
            policy=policy,
            eval_prompts=self.eval_prompts(),
            oracle=SortOracle(),
            generation={"max_new_tokens": self.max_new_tokens, "temperature": 1.0},
            info=info,
        )
