"""Training: the LightningModule and the Trainer plumbing around an optimizer step.

The module (`module`: the policy's pass and the loss call; its log-probs, layouts and frozen side are
prefopt.scoring's), the callback that attaches the cached log-prob tables (`logp_caches`), optimizer and
schedule (`optim`), clipping, the Trainer and its strategies (`trainer_factory`), checkpoints and
resuming (`checkpointing`, `ckpt_io`, `resume`), the disk-space check before training (`disk`), signals
and non-finite guards, the loss-stall warning, loggers, progress, throughput (`perf`), hardware, the
evaluation during training (`eval_during`) and gathering a sharded policy (`gather`). Losses do not live
here (prefopt.losses): the module calls the configured loss and never branches on which one it is.
Exercised by `pytest tests/test_module.py tests/test_optim.py tests/test_resume.py tests/test_signals.py
tests/test_disk.py`.
"""
