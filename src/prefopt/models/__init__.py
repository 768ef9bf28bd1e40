"""Models: loading a policy (tiny, GGUF, Hugging Face folder), setting it up (dtype, dropout, LoRA,
gradient checkpointing) and exporting the trained one (`load`, `setup`, `export`).

A new model family is a yaml in `conf/model/`; code goes here only when it needs a new loader.
"""
