"""Judges beyond the task's oracle (prefopt/eval/judge.py has the interface, the oracle and `none`):
`reward_model.RewardModelJudge`, a local Hugging Face sequence-classification reward model; `vader.VaderJudge`,
VADER's lexicon-and-rules sentiment score (offline, an independent second judge for data=imdb).
Exercised by `pytest tests/test_judge.py`.
"""
