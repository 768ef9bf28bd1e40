"""One run, top to bottom: the named steps (`steps`), the order they run in and how a failure is
recorded (`runner`), and the results.json record (`results`). `src/run.py` calls `runner.run`.
"""
