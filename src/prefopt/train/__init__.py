"""Training: the LightningModule and everything around one optimizer step.

The module and its log-probabilities (`module`, `logps`), the cached reference/marginal table
(`logp_cache`), optimizer and schedule (`optim`), clipping, the Trainer and its strategies
(`trainer_factory`), checkpoints and resuming, signals and guards, loggers, progress and throughput.
"""
