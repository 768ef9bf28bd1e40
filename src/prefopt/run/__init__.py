"""One run, top to bottom: the named steps (`steps`), the order they run in and how a failure or an
interrupt is recorded (`runner`), and the results.json record (`results`). `src/run.py` calls
`runner.run` for each Hydra job. A new stage of a run is a function in `steps.py` called from
`runner.train_and_evaluate`; it holds no loss- or task-specific branches. Exercised by
`pytest tests/test_run.py tests/test_preflight.py`.
"""
