"""Evaluation: sampling from the trained policy and scoring it with the task's oracle (`evaluate`,
`generation`), and the cached evaluation of the starting policy (`cache`).
"""
