"""The embedded `imdb` task: controlled sentiment generation on real IMDb reviews (the DPO paper's first
experiment at laptop scale). Exercised by `python src/run.py data=imdb` and `pytest tests/tasks/test_imdb_task.py`.

`ImdbTask.build` makes four artifacts, each cached in the prefopt cache under a fingerprint of what it
depends on (changing a setting rebuilds that artifact and those downstream of it, nothing else):

    imdb_reward     gold reward: TF-IDF + logistic regression on short windows of the classifier pool,
                    stored as classifier.json + classifier.npz (no pickle; see imdb_reward.py)
    imdb_tokenizer  4096-token byte-level BPE trained on the SFT reviews          (model=tiny only)
    imdb_sft        tiny Llama trained from scratch as a causal LM on those reviews (model=tiny only)
    imdb_pairs      pairs.jsonl: review prefixes of 2-8 words, `samples_per_prompt` continuations
                    sampled from the starting policy, every two with different gold rewards a pair
                    (chosen = the higher P(positive)); identical or equally scored samples are dropped

The gold reward is P(positive | prompt + response) in [0, 1] (see imdb_reward.py). Which policy starts is
`prefopt.models.choose.choose_start`'s choice (`ImdbTask.needs`): with a model config that sets `model.path`
or `model.gguf` (e.g. model=smollm2_135m) it is that model as loaded: no tokenizer or SFT is built, pairs
are sampled from it.
"""

from __future__ import annotations

import json
import time
from functools import partial
from itertools import combinations
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from prefopt.store.cache import DONE_MARKER, cached_dir, file_fingerprint, fingerprint
from prefopt.data.tokenizer_builder import build_bpe_tokenizer
from prefopt.errors import ConfigError
from prefopt.eval.generation import sample
from prefopt.log import get_logger
from prefopt.contracts.task import Start, StartNeeds, Task, TaskArtifacts
from prefopt.models.load import build_tiny, load_start
from prefopt.tasks.sft import train_causal_lm
from prefopt.tasks.base import Built, check_pair_sampling, load_pairs_split, mean
from prefopt.tasks.imdb_data import csv_path, load_reviews, prompts_from, split_reviews, take
from prefopt.tasks.imdb_reward import (
    CHECK_WORDS, CLASSIFIER_FORMAT, SentimentReward, accuracy, check_same_scores, first_words, load_classifier,
    save_classifier, train_classifier,
)

ARTIFACT_VERSION = 1  # bump when the build code changes what an artifact contains
MIN_WINDOW_TOKENS = 8  # SFT windows shorter than this (review tails) are dropped


log = get_logger("imdb")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def sft_windows(token_ids: list[list[int]], bos: int, eos: int, seq_len: int) -> list[list[int]]:
    """Cut each review's ids (BOS text) + EOS into windows of `seq_len` tokens, each starting with BOS.

    The first window is BOS + the review's opening; later windows are BOS + the next seq_len - 1
    tokens, so BOS means "start of a text window" and the policy's pi(y | BOS) (RMiPO's marginal) is
    a meaningful prompt-free distribution. Windows under MIN_WINDOW_TOKENS tokens are dropped.
    """
    out = []
    for ids in token_ids:
        body = (ids[1:] if ids[:1] == [bos] else ids) + [eos]
        for start in range(0, len(body), seq_len - 1):
            window = [bos] + body[start: start + seq_len - 1]
            if len(window) >= MIN_WINDOW_TOKENS:
                out.append(window)
    return out


def pair_rows(
    prompts: list[str], responses: list[str], rewards: list[float], k: int
) -> tuple[list[dict[str, str]], int]:
    """Rows from `k` consecutive samples per prompt: every two whose rewards differ, the higher chosen.

    Returns (rows, ties dropped: two identical texts or two equal rewards)."""
    rows, ties = [], 0
    for p, prompt in enumerate(prompts):
        scored = list(zip(responses[p * k: (p + 1) * k], rewards[p * k: (p + 1) * k]))
        for (a, ra), (b, rb) in combinations(scored, 2):
            if a == b or ra == rb:
                ties += 1
                continue
            chosen, rejected = (a, b) if ra > rb else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows, ties


class ImdbTask(Task):
    """Write positive IMDb reviews; pairs ranked by a sentiment classifier (the gold reward).

    Args (defaults: the whole first `python src/run.py data=imdb` took 407 s on one thread of a busy
    two-core machine, the SFT 205 s of it; see benchmarks/imdb_pipeline.py):
        n_classifier, n_classifier_test: reviews of the classifier pool to train the gold reward on,
            and (disjoint) to check it on; its held-out accuracy is printed and recorded.
        classifier_windows: training windows (10-60 consecutive words) drawn per review.
        classifier_c: inverse L2 strength of the logistic regression.
        architecture: the tiny Llama for this task (hidden_size, num_hidden_layers, num_attention_heads,
            intermediate_size, max_position_embeddings); overrides the same keys of `model.tiny`, which
            is sized for the sort task. null: use `model.tiny` as it is.
        n_sft_reviews: reviews of the SFT pool the tokenizer and the starting policy are trained on.
        sft_steps, sft_lr, sft_batch_size, sft_seq_len: the causal-LM loop (windows of sft_seq_len).
        n_pair_prompts: review prefixes to sample pairs for (the last eval_fraction give eval_rows).
        samples_per_prompt: continuations sampled per prompt (>= 2).
        prompt_min_words, prompt_max_words: prefix length range, in words.
        n_eval_prompts: held-out prefixes for the generation evaluation (their own pool of reviews).
        eval_fraction: share of the pair prompts whose pairs are returned as eval_rows.
        max_new_tokens, temperature: sampling for pairs and evaluation.
        seed: fixes the splits, prefixes, classifier windows, model init, SFT order and samples.
        sample_batch_size: batch size for sampling pairs (speed only; the draws depend on it).
    """

    name = "imdb"

    def __init__(
        self,
        n_classifier: int = 8000,
        n_classifier_test: int = 1000,
        classifier_windows: int = 8,
        classifier_c: float = 4.0,
        architecture: Optional[dict[str, Any]] = None,
        n_sft_reviews: int = 5000,
        sft_steps: int = 600,
        sft_lr: float = 2e-3,
        sft_batch_size: int = 32,
        sft_seq_len: int = 64,
        n_pair_prompts: int = 2000,
        samples_per_prompt: int = 2,
        prompt_min_words: int = 2,
        prompt_max_words: int = 8,
        n_eval_prompts: int = 512,
        eval_fraction: float = 0.05,
        max_new_tokens: int = 48,
        temperature: float = 1.0,
        seed: int = 0,
        sample_batch_size: int = 128,
    ):
        self.n_classifier, self.n_classifier_test = n_classifier, n_classifier_test
        self.classifier_windows, self.classifier_c = classifier_windows, classifier_c
        self.architecture = dict(_plain(architecture) or {})
        # model=tiny: its own BPE and SFT start, `architecture` over model.tiny; model.path / model.gguf: as is
        self.needs = StartNeeds(builds_start=True, architecture=self.architecture)
        self.n_sft_reviews, self.sft_steps, self.sft_lr = n_sft_reviews, sft_steps, sft_lr
        self.sft_batch_size, self.sft_seq_len = sft_batch_size, sft_seq_len
        self.n_pair_prompts, self.samples_per_prompt = n_pair_prompts, samples_per_prompt
        self.prompt_min_words, self.prompt_max_words = prompt_min_words, prompt_max_words
        self.n_eval_prompts, self.eval_fraction = n_eval_prompts, eval_fraction
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.seed, self.sample_batch_size = seed, sample_batch_size
        self._pools: Optional[dict[str, list]] = None
        self._data_key: Optional[str] = None
        self._check_settings()

    def _check_settings(self) -> None:
        """The constructor's range checks: a bad setting is a ValueError naming it."""
        check_pair_sampling(self.samples_per_prompt, self.eval_fraction)
        if not 1 <= self.prompt_min_words <= self.prompt_max_words:
            raise ValueError(f"need 1 <= prompt_min_words <= prompt_max_words, got {self.prompt_min_words}, "
                             f"{self.prompt_max_words}")
        if self.sft_seq_len < MIN_WINDOW_TOKENS:
            raise ValueError(f"sft_seq_len must be at least {MIN_WINDOW_TOKENS}, got {self.sft_seq_len}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        for key in ("n_classifier", "n_classifier_test", "n_sft_reviews", "n_pair_prompts", "n_eval_prompts",
                    "classifier_windows", "sft_steps", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")

    # ---- data ----------------------------------------------------------------------------------
    def data_key(self) -> str:
        if self._data_key is None:
            self._data_key = file_fingerprint(csv_path())
        return self._data_key

    def pools(self) -> dict[str, list]:
        if self._pools is None:
            self._pools = split_reviews(load_reviews(), self.seed)
        return self._pools

    def _take(self, pool: str, n: int, key: str, offset: int = 0) -> list:
        try:
            return take(self.pools()[pool], n, f"data.source.{key}", offset)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def eval_prompts(self) -> list[str]:
        reviews = self._take("eval", self.n_eval_prompts, "n_eval_prompts")
        return prompts_from(reviews, f"imdb-eval-{self.seed}", self.prompt_min_words, self.prompt_max_words)

    def pair_prompts(self) -> list[str]:
        reviews = self._take("pairs", self.n_pair_prompts, "n_pair_prompts")
        return prompts_from(reviews, f"imdb-pairs-{self.seed}", self.prompt_min_words, self.prompt_max_words)

    # ---- what each artifact depends on ---------------------------------------------------------
    def classifier_key(self) -> str:
        """What the gold classifier is (its data and settings): the pairs depend on this, not on how it is stored."""
        return fingerprint("imdb-reward", ARTIFACT_VERSION, self.data_key(), self.seed, self.n_classifier,
                           self.n_classifier_test, self.classifier_windows, self.classifier_c)

    def reward_key(self) -> str:
        """The reward's cache folder: the classifier in its stored form (CLASSIFIER_FORMAT), so a folder of an
        older form (a pickled classifier.joblib) is never read: the classifier is refitted beside it."""
        return fingerprint(self.classifier_key(), CLASSIFIER_FORMAT)

    def tokenizer_key(self, vocab_size: int) -> str:
        return fingerprint("imdb-bpe", ARTIFACT_VERSION, self.data_key(), self.seed, self.n_sft_reviews, vocab_size)

    def sft_key(self, tokenizer_key: str, arch: dict[str, Any]) -> str:
        return fingerprint("imdb-sft", ARTIFACT_VERSION, tokenizer_key, arch, self.sft_steps, self.sft_lr,
                           self.sft_batch_size, self.sft_seq_len, self.seed)

    def pairs_key(self, policy_key: str, classifier_key: str) -> str:
        return fingerprint("imdb-pairs", ARTIFACT_VERSION, policy_key, classifier_key, self.data_key(),
                           self.n_pair_prompts, self.samples_per_prompt, self.prompt_min_words,
                           self.prompt_max_words, self.max_new_tokens, self.temperature, self.seed,
                           self.sample_batch_size)

    def sft_architecture(self, start: Start) -> Optional[dict[str, Any]]:
        """The architecture of the SFT start this task trains (model.tiny with `architecture` over it), or
        None when the run starts from a pretrained model (`prefopt.models.choose.choose_start` decides)."""
        if start.kind != "task":
            return None
        positions = start.architecture.get("max_position_embeddings")
        if positions is not None and positions < self.sft_seq_len:
            raise ConfigError(
                f"data.source.architecture.max_position_embeddings={positions} is shorter than "
                f"data.source.sft_seq_len={self.sft_seq_len}"
            )
        return start.architecture

    # ---- building ------------------------------------------------------------------------------
    def _build_reward(self, out: Path) -> None:
        start = time.time()
        train = self._take("classifier", self.n_classifier, "n_classifier", offset=self.n_classifier_test)
        test = self._take("classifier", self.n_classifier_test, "n_classifier_test")
        with tqdm(total=3, desc="gold reward: TF-IDF + logistic regression", leave=False, disable=None) as bar:
            model = train_classifier(train, self.seed, self.classifier_windows, c=self.classifier_c)
            bar.update()
            short = accuracy(model, test, CHECK_WORDS)
            bar.update()
            full = accuracy(model, test)
            bar.update()
        save_classifier(model, out)
        scorer = load_classifier(out)  # the reward as every run will read it
        held_out = [first_words(r.text, CHECK_WORDS) for r in test]
        gap = check_same_scores(model, scorer, held_out + [r.text for r in test])
        reward = SentimentReward(scorer)
        meta = {
            "accuracy_first_40_words": short,
            "accuracy_full_review": full,
            "test_positive_share": mean([r.label for r in test]),
            "test_mean_reward_first_40_words": mean(reward.probability(held_out)),
            "stored_classifier_max_gap": gap,
            "n_train": len(train),
            "n_test": len(test),
            "reward_seconds": time.time() - start,
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=1))

    def _build_tokenizer(self, out: Path, vocab_size: int) -> None:
        texts = [r.text for r in self._take("sft", self.n_sft_reviews, "n_sft_reviews")]
        with tqdm(total=1, desc=f"{vocab_size}-token BPE on {len(texts)} reviews", leave=False, disable=None) as bar:
            build_bpe_tokenizer(texts, vocab_size=vocab_size).save_pretrained(out)
            bar.update()

    def _build_sft(self, out: Path, tokenizer_dir: Path, arch: dict[str, Any]) -> None:
        start = time.time()
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        texts = [r.text for r in self._take("sft", self.n_sft_reviews, "n_sft_reviews")]
        ids = tok(texts)["input_ids"]
        sequences = sft_windows(ids, tok.bos_token_id, tok.eos_token_id, self.sft_seq_len)
        model = build_tiny(tok, **{"seed": self.seed, **arch})
        n_params = sum(p.numel() for p in model.parameters())
        layers, width = model.config.num_hidden_layers, model.config.hidden_size
        losses = train_causal_lm(
            model, sequences, self.sft_steps, self.sft_lr, self.sft_batch_size, self.seed, tok.pad_token_id,
            desc=f"SFT imdb policy ({layers}-layer d={width}, {n_params / 1e6:.2f}M params)",
        )
        model.save_pretrained(out)
        tok.save_pretrained(out)
        meta = {
            "n_params": n_params,
            "n_windows": len(sequences),
            "corpus_tokens": sum(len(s) for s in sequences),
            "trained_tokens": self.sft_steps * self.sft_batch_size * self.sft_seq_len,
            "sft_first_loss": mean(losses[:20]),
            "sft_final_loss": mean(losses[-50:]),
            "sft_seconds": time.time() - start,
        }
        (out / "imdb_meta.json").write_text(json.dumps(meta, indent=1))

    def _build_pairs(self, out: Path, model, tok, reward: SentimentReward) -> dict[str, int]:
        start = time.time()
        prompts = self.pair_prompts()
        k = self.samples_per_prompt
        repeated = [p for p in prompts for _ in range(k)]
        ids = tok(repeated)["input_ids"]
        sampled = sample(model, tok, ids, self.max_new_tokens, self.temperature, self.seed,
                         self.sample_batch_size, f"sampling {len(prompts)} prompts x {k} continuations")
        responses = tok.batch_decode(sampled, skip_special_tokens=True)
        rewards = reward(repeated, responses)
        rows, ties = pair_rows(prompts, responses, rewards, k)
        with open(out / "pairs.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        gaps = [max(rewards[i * k:(i + 1) * k]) - min(rewards[i * k:(i + 1) * k]) for i in range(len(prompts))]
        meta = {
            "n_pairs": len(rows),
            "ties_dropped": ties,
            "sample_reward": mean(rewards),
            "sample_reward_gap": mean(gaps),
            "sample_tokens": mean([len(s) for s in sampled]),
            "pairs_seconds": time.time() - start,
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
        return {"pairs.jsonl": len(rows)}

    def _tiny_policy(
        self, model_cfg: Any, arch: dict[str, Any], cache_root: Path, info: dict[str, Any]
    ) -> tuple[Path, str]:
        """The tokenizer and the SFT policy trained from scratch (cached); returns (folder, key)."""
        vocab = int((model_cfg or {}).get("vocab_size", 4096))
        tok_key = self.tokenizer_key(vocab)
        log.info(f"tokenizer {tok_key}: {vocab}-token byte-level BPE on {self.n_sft_reviews} reviews")
        tok_dir = cached_dir(cache_root, "imdb_tokenizer", tok_key, lambda d: self._build_tokenizer(d, vocab))
        policy_key = self.sft_key(tok_key, arch)
        log.info(f"SFT policy {policy_key}: tiny Llama {arch}, {self.sft_steps} steps x "
                 f"{self.sft_batch_size} x {self.sft_seq_len} tokens")
        sft_build = Built(lambda d: self._build_sft(d, tok_dir, arch))
        policy = cached_dir(cache_root, "imdb_sft", policy_key, sft_build)
        smeta = json.loads((policy / "imdb_meta.json").read_text())
        log.info(f"SFT policy: {smeta['n_params'] / 1e6:.2f}M params, loss {smeta['sft_first_loss']:.2f} -> "
                 f"{smeta['sft_final_loss']:.2f} over {smeta['trained_tokens'] / 1e6:.2f}M tokens, "
                 f"{sft_build.origin(smeta['sft_seconds'], policy)}")
        info.update({"imdb/sft_key": policy_key, "imdb/sft_final_loss": smeta["sft_final_loss"]})
        return policy, policy_key

    def _reward_beside_sft(self, cache_root: Path, reward_key: str, arch: Optional[dict]) -> Optional[Any]:
        """Start building the gold reward in a second process when the SFT policy must be built too:
        they share nothing, so on two cores the reward costs no time on the way to the pairs. The
        child holds the artifact's lock; `cached_dir` in this process then waits for it (or, had the
        child failed, builds it here and raises here). None when there is nothing to overlap."""
        if arch is None or (Path(cache_root) / "imdb_reward" / reward_key / DONE_MARKER).exists():
            return None
        import multiprocessing as mp

        # spawn, not fork: this process has torch's thread pools running
        child = mp.get_context("spawn").Process(target=cached_dir, daemon=True,
                                                args=(cache_root, "imdb_reward", reward_key, self._build_reward))
        child.start()
        return child

    def _gold_reward(self, cache_root: Path, reward_key: str, info: dict[str, Any]) -> tuple[SentimentReward, dict]:
        """The gold reward (cached; built here unless `_reward_beside_sft` built it) and its meta."""
        reward_dir = cached_dir(cache_root, "imdb_reward", reward_key, self._build_reward)
        reward = SentimentReward(load_classifier(reward_dir))
        rmeta = json.loads((reward_dir / "meta.json").read_text())
        log.info(
            "gold reward = P(positive | prompt + response); held-out accuracy "
            f"{rmeta['accuracy_first_40_words']:.3f} "
            f"on the first {CHECK_WORDS} words of {rmeta['n_test']} reviews ({rmeta['accuracy_full_review']:.3f} "
            f"on whole reviews; positive share {rmeta['test_positive_share']:.2f})"
        )
        info.update({
            "imdb/reward_key": reward_key,
            "imdb/reward": "P(positive | prompt + response)",
            "imdb/classifier_accuracy_40_words": rmeta["accuracy_first_40_words"],
            "imdb/classifier_accuracy_full": rmeta["accuracy_full_review"],
            "imdb/reviews_reward_40_words": rmeta["test_mean_reward_first_40_words"],
        })
        return reward, rmeta

    def _pretrained_key(self, model_cfg: Any) -> str:
        """The fingerprint standing for a pretrained starting policy in the pairs' key."""
        ident = {k: _plain(model_cfg.get(k)) for k in ("name", "path", "gguf") if model_cfg.get(k) is not None}
        log.info(f"starting policy: model={model_cfg.get('name')} as loaded (no tokenizer or SFT is built)")
        return fingerprint("imdb-pretrained", ident)

    def _pairs(self, cache_root: Path, pairs_key: str, load: Any, reward: SentimentReward, rmeta: dict) -> tuple:
        """(folder, meta) of the pairs sampled from the starting policy `load()` gives (cached)."""
        log.info(f"pairs {pairs_key}: {self.n_pair_prompts} prompts x {self.samples_per_prompt} continuations "
                 f"of up to {self.max_new_tokens} tokens")

        def build_pairs(out: Path) -> dict[str, int]:
            model, tok = load()  # load_start gives a pad token where the tokenizer has none
            return self._build_pairs(out, model, tok, reward)

        pairs_build = Built(build_pairs)
        pairs_dir = cached_dir(cache_root, "imdb_pairs", pairs_key, pairs_build)
        pmeta = json.loads((pairs_dir / "meta.json").read_text())
        log.info(f"{pmeta['n_pairs']} pairs ({pmeta['ties_dropped']} ties dropped); starting policy's samples "
                 f"score {pmeta['sample_reward']:.3f} (real review openings "
                 f"{rmeta['test_mean_reward_first_40_words']:.3f}), "
                 f"mean best-worst gap {pmeta['sample_reward_gap']:.3f}; "
                 f"{pairs_build.origin(pmeta['pairs_seconds'], pairs_dir)}")
        return pairs_dir, pmeta

    def build(self, start: Start, model_cfg: Any, cache_root: Path) -> TaskArtifacts:
        """`start` (as the run chose it: the task's own SFT start for model=tiny, or a pretrained model)."""
        arch = self.sft_architecture(start)
        reward_key = self.reward_key()
        log.info(f"gold reward {reward_key}: sentiment classifier on {self.n_classifier} reviews")
        child = self._reward_beside_sft(cache_root, reward_key, arch)
        info: dict[str, Any] = {}
        policy = None
        if arch is not None:
            policy, policy_key = self._tiny_policy(model_cfg, arch, cache_root, info)
        if child is not None:
            child.join()
        reward, rmeta = self._gold_reward(cache_root, reward_key, info)
        if arch is None:
            policy_key = self._pretrained_key(model_cfg)
        cfg = model_cfg if model_cfg is not None else OmegaConf.create({})  # direct API use: no config
        # the classifier's stored form does not change its scores: pairs built from the pickled one stay valid
        pairs_key = self.pairs_key(policy_key, self.classifier_key())
        pairs_dir, pmeta = self._pairs(cache_root, pairs_key, partial(load_start, start, cfg, cache_root, policy),
                                       reward, rmeta)
        train_rows, eval_rows = load_pairs_split(pairs_dir / "pairs.jsonl", self.eval_fraction, pmeta["n_pairs"])
        info.update({
            "imdb/pairs_key": pairs_key,
            "imdb/pairs_file": str(pairs_dir / "pairs.jsonl"),
            "imdb/n_pairs": pmeta["n_pairs"],
            "imdb/n_train_rows": len(train_rows),
            "imdb/n_eval_rows": len(eval_rows),
            "imdb/ties_dropped": pmeta["ties_dropped"],
            "imdb/pair_sample_reward": pmeta["sample_reward"],
        })
        return TaskArtifacts(
            train_rows=train_rows,
            eval_rows=eval_rows,
            policy=policy,
            eval_prompts=self.eval_prompts(),
            oracle=reward,
            generation={"max_new_tokens": self.max_new_tokens, "temperature": self.temperature},
            info=info,
            responses_end_with_eos=False,  # continuations cut at max_new_tokens, not finished reviews
        )
