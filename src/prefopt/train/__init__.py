"""Training: the LightningModule and everything around an optimizer step and the Trainer.

The module and its log-probabilities (`module`, `logps`), where the reference and marginal log-probs
come from (`frozen`) and their cached tables (`logp_cache`), optimizer and schedule (`optim`),
clipping, the Trainer and its strategies (`trainer_factory`), checkpoints and resuming
(`checkpointing`, `resume`), signals and non-finite guards, loggers, progress, throughput (`perf`),
hardware, and gathering a sharded policy (`gather`). Losses do not live here (prefopt.losses): the
module calls the configured loss and never branches on which one it is. Exercised by
`pytest tests/test_module.py tests/test_frozen.py tests/test_logps.py tests/test_logp_cache.py
tests/test_optim.py tests/test_resume.py tests/test_signals.py`.
"""
