"""Evaluation after training: sampling from the trained policy and its start (`generation`), scoring
both with the task's oracle into oracle reward, win rate and KL (`evaluate`), and the starting
policy's side cached once per sweep (`cache`). A new evaluation metric goes in `evaluate.py`; a task's
own reward belongs to the task (prefopt.tasks). Exercised by `pytest tests/test_eval.py
tests/test_cache_faults.py`.
"""
