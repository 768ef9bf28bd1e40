"""The real Mistral-7B v0.1 tokenizer with the Zephyr chat template, as a folder tests can load.

The SentencePiece model ships inside the `mistral-common==1.13.1` wheel as
`mistral_common/data/tokenizer.model.v1`; `make test` downloads the wheel and extracts that one file to
`.venv/mistral-tokenizer.model.v1` (the package itself is not installed).
`mistral_tokenizer_dir(tmp_path)` writes it as `tokenizer.model` beside a `tokenizer_config.json`
(LlamaTokenizer, the chat template of HuggingFaceH4/mistral-7b-sft-beta, which `model=mistral7b`
trains from) and a `special_tokens_map.json`; `AutoTokenizer.from_pretrained(folder)` loads it (needs
`sentencepiece`). Used by tests/data/test_tokenize_real.py.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

# The Zephyr format: "<|system|>\n...</s>\n<|user|>\n...</s>\n<|assistant|>\n...</s>\n", no BOS in
# the template (the tokenizer adds it to text).
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Zephyr roles are system, user and assistant, not ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


VENV_ASSET = Path(__file__).resolve().parents[1] / ".venv" / "mistral-tokenizer.model.v1"


def mistral_sentencepiece_model() -> Path:
    """tokenizer.model.v1: as `make test` extracts it from the mistral-common wheel into .venv/, or from
    an installed mistral-common package (located, not imported)."""
    if VENV_ASSET.is_file():
        return VENV_ASSET
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{VENV_ASSET} is missing: run `make test` (it extracts the Mistral "
                                "tokenizer from the mistral-common==1.13.1 wheel)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mistral-common")
    return path


def mistral_tokenizer_dir(tmp_path: Path) -> Path:
    """A folder `tmp_path/mistral-tokenizer` holding the Mistral-7B v0.1 tokenizer with the Zephyr template."""
    folder = Path(tmp_path) / "mistral-tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mistral_sentencepiece_model(), folder / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", **SPECIAL_TOKENS, "add_bos_token": True,
              "add_eos_token": False, "model_max_length": 32768, "chat_template": ZEPHYR_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2))
    return folder
