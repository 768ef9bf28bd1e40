"""Evaluation after training: sampling from the trained policy and its start (`generation`), scoring
both with the task's oracle into oracle reward, win rate and KL (`evaluate`), and the starting
policy's side cached once per sweep (`cache`); the judge that scores the answers (`judge`: the task's
oracle, a reward model in `judges/`, or none), the judged evaluation (`judged`: eval/judge_* metrics and
judgements.jsonl), its length-controlled win rate (`lc_win_rate`) and the AlpacaEval `generations.json`
of the trained policy's answers (`export`). A new evaluation metric goes in
`evaluate.py` or `judged.py`; a task's own reward belongs to the task (prefopt.tasks). Exercised by
`pytest tests/test_eval.py tests/test_cache_faults.py tests/test_judge.py tests/test_judge_lc.py`.
"""
