"""Training-pass time of the shared-prompt pass against full prompt+response rows, by prompt length.

Times forward + backward of `prefopt.scoring.layout.pair_batch_logps` on a 2-layer d=64 Llama (the sort and
benchmark `tiny` shape) with share_prompt true and false, interleaved, one thread, median of 25 after
5 warm-ups; prints the ratio shared/rows. Behind `SHARE_MIN_PROMPT_TOKENS` (the "auto" threshold).

    python benchmarks/shared_prompt.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from prefopt.data.collate import PairCollator  # noqa: E402
from prefopt.scoring.marginal import MarginalRows
from prefopt.scoring.layout import pair_batch_logps  # noqa: E402
from prefopt.models.load import build_tiny  # noqa: E402

ARCH = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            max_position_embeddings=512)
SHAPES = [(6, 9, 16), (16, 16, 16), (32, 32, 8), (64, 64, 4)]  # prompt tokens, response tokens, pairs


def batch(vocab: int, prompt: int, response: int, pairs: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    def words(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]
    items = [{"prompt_ids": [1] + words(prompt - 1 - rng.randrange(2)), "chosen_ids": words(response - rng.randrange(3)),
              "rejected_ids": words(response - rng.randrange(3)), "index": i} for i in range(pairs)]
    return PairCollator(pad_id=0, marginal=MarginalRows([1]))(items)


def main() -> None:
    torch.set_num_threads(1)
    for vocab in (32, 4096):
        tok = type("Tok", (), {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "__len__": lambda s: vocab})()
        model = build_tiny(tok, **ARCH)
        for prompt, response, pairs in SHAPES:
            b = batch(vocab, prompt, response, pairs)
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(30):
                for share in (True, False):
                    t0 = time.perf_counter()
                    logps, _ = pair_batch_logps(model, b, share)
                    logps.sum().backward()
                    times[share].append(time.perf_counter() - t0)
            shared, rows = (statistics.median(times[s][5:]) for s in (True, False))
            print(f"vocab {vocab:5} prompt {prompt:3} response {response:3} pairs {pairs:3}: shared {shared * 1e3:6.1f} ms,"
                  f" rows {rows * 1e3:6.1f} ms, shared/rows {shared / rows:.2f}")


if __name__ == "__main__":
    main()
