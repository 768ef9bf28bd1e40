"""Scoring: turning a policy and a pair batch into per-response log-probs, on one `Layout` interface.

The log-prob core (`logps`: the LM head only where a token is scored, chunked float32 log-softmax); the
layouts (prefopt.contracts.layout.Layout), each building its own batch tensors and scoring them: padded
rows (`rows`), each prompt once (`shared`), sequences packed end to end (`packed`), each prompt once in
packed rows (`tree`); the token-count buckets their token dimensions are padded to (`buckets`,
`data.token_buckets`); which layouts a run uses, chosen once (`layout.choose_layout`, kept in the run
plan), and scoring a batch on the first that fits (`layout.pair_batch_logps`); whether a pass may share
prompts (`sharing`); the marginal rows a loss that `needs_marginal` scores (`marginal`); the frozen side,
reference and marginal log-probs (`frozen`), and their tables cached on disk (`logp_cache`). Trainer
plumbing is prefopt.train's; losses are prefopt.losses'. Exercised by `pytest tests/test_logps.py
tests/test_packed_logps.py tests/test_tree_logps.py tests/test_frozen.py tests/test_logp_cache.py`.
"""
