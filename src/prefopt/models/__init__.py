"""Models: which policy a run starts from and loading it; preparing it for training.

`choose` reads the model config against what the task needs (`Task.needs`), `load` builds the tiny
Llama or loads a Hugging Face folder, hub id or GGUF file (dtype, attention implementation), `setup`
applies dropout, LoRA and gradient checkpointing and saves the trained policy (`model/`). A new model is a yaml in `conf/model/` (`model.path`,
`model.lr`, ...); code goes here only when it needs a new loader or set-up step. Exercised by
`pytest tests/tasks/test_choose.py tests/test_architectures.py tests/test_lora.py tests/test_dropout.py`.
"""
