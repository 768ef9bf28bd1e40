"""Judges that load models of their own (prefopt/eval/judge.py has the interface, the oracle and `none`):
`reward_model.RewardModelJudge`, a local Hugging Face sequence-classification reward model.
Exercised by `pytest tests/test_judge.py`.
"""
