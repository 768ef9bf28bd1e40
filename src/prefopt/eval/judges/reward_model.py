"""A local Hugging Face reward model as the judge: `judge=reward_model judge.path=FOLDER`.

Any folder `AutoModelForSequenceClassification` loads whose config names a sequence-classification
architecture (Skywork-Reward-Llama-3.1-8B, an ArmoRM with `judge.trust_remote_code=true`, a
`LlamaForSequenceClassification` saved by `save_pretrained`). One output is the reward; a model with
several needs `judge.output_index`. Each (prompt, response) is formatted through the reward model's own
tokenizer: with a chat template, the conversation [prompt messages (a string prompt: one user message),
{assistant: response}] is rendered and tokenized without extra special tokens, which is what
`apply_chat_template(tokenize=True)` gives, as reward-model cards use it. Fallback, for a tokenizer with
no chat template: a string prompt and its response are encoded as a text pair (`tokenizer(prompt,
response)`, the form of reward models such as OpenAssistant's DeBERTa ones); chat prompts then cannot be
formatted, a one-line error before training. Inputs longer than `judge.max_length` tokens keep their
first max_length tokens and are counted (eval/judge_truncated). Scoring is batched (`judge.batch_size`,
rows of like lengths together, padded on the right, so each row's score is the one it gets alone), in
`judge.dtype` (auto: bfloat16 on GPUs, float32 on CPUs), on the GPU when there is one. Weights load on the
first `score` and are freed by `close`; `check` reads config.json and the tokenizer only.
Exercised by `pytest tests/test_judge.py`.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from prefopt.errors import first_line
from prefopt.eval.judge import Judge, JudgeError, JudgeScores, Prompt
from prefopt.log import get_logger
from prefopt.store.cache import fingerprint

log = get_logger()
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMAT_VERSION = 1  # of the formatting: part of the fingerprint
EXAMPLE = "e.g. `hf download Skywork/Skywork-Reward-Llama-3.1-8B-v0.2 --local-dir DIR`"


def conversation(prompt: Prompt, response: str) -> list[dict[str, str]]:
    """The prompt's messages (a string prompt: one user message), then the response as the assistant's."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    return messages + [{"role": "assistant", "content": response}]


def is_sequence_classifier(config: Any) -> bool:
    """Whether config.json names a sequence-classification model (its own, or one through auto_map)."""
    archs = getattr(config, "architectures", None) or []
    auto = getattr(config, "auto_map", None) or {}
    return any(a.endswith("ForSequenceClassification") for a in archs) or "AutoModelForSequenceClassification" in auto


def text_config(config: Any) -> Any:
    """The config that holds the text model's settings (pad_token_id), itself for a text-only model."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


class RewardModelJudge(Judge):
    """A sequence-classification reward model from a local folder (see the module docstring)."""

    name = "reward_model"

    def __init__(self, path: Optional[str], output_index: Optional[int] = None, batch_size: int = 8,
                 max_length: int = 4096, dtype: str = "auto", trust_remote_code: bool = False) -> None:
        if not path:
            raise ValueError(f"path is not set: judge.path=FOLDER, a local reward-model folder ({EXAMPLE})")
        if output_index is not None and output_index < 0:
            raise ValueError(f"output_index={output_index} is not allowed; it must be an integer >= 0 or null")
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size={batch_size}, max_length={max_length}: both must be integers > 0")
        if dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype={dtype} is not allowed; it must be one of auto, {', '.join(DTYPES)}")
        self.path, self.output_index, self.batch_size = str(path), output_index, batch_size
        self.max_length, self.dtype, self.trust_remote_code = max_length, dtype, trust_remote_code
        self._tokenizer: Any = None
        self._model: Any = None
        self._index = 0
        self._native_pad: Optional[int] = None

    def describe(self) -> str:
        return f"reward_model judge.path={self.path}"

    # ---------------------------------------------------------------------------- checks (no weights)

    def folder(self) -> Path:
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            there = "is a file, not a model folder" if folder.exists() else "does not exist (no such folder)"
            raise JudgeError(f"judge.path={self.path} {there}: judge=reward_model needs a local Hugging Face "
                             f"reward-model folder (config.json, weights, tokenizer), {EXAMPLE}")
        return folder

    def model_config(self) -> Any:
        """config.json, checked to be a sequence classifier."""
        from transformers import AutoConfig

        folder = self.folder()
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError, KeyError) as err:
            if "trust_remote_code" in str(err):
                raise JudgeError(f"judge.path={self.path} needs its own code to load: set "
                                 "judge.trust_remote_code=true if you trust it") from None
            raise JudgeError(f"judge.path={self.path} is not a Hugging Face model folder: {first_line(err)}") from None
        if not is_sequence_classifier(config):
            archs = ", ".join(getattr(config, "architectures", None) or ["no architecture"])
            raise JudgeError(f"judge.path={self.path} holds a {archs}, not a sequence-classification reward model: "
                             "judge=reward_model needs a folder AutoModelForSequenceClassification loads "
                             "(e.g. Skywork-Reward-Llama-3.1-8B)")
        return config

    def output_of(self, config: Any) -> int:
        """The output that is the reward: the only one, or `output_index`."""
        n = int(config.num_labels)
        if self.output_index is None:
            if n != 1:
                raise JudgeError(f"judge.path={self.path} has {n} outputs (config.json num_labels): set "
                                 f"judge.output_index to the one that is the reward (0 to {n - 1})")
            return 0
        if self.output_index >= n:
            raise JudgeError(f"judge.output_index={self.output_index} is not an output of judge.path={self.path}, "
                             f"which has {n} (0 to {n - 1})")
        return self.output_index

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from prefopt.models.load import load_tokenizer

            folder = self.folder()
            try:
                self._tokenizer = load_tokenizer(str(folder), trust_remote_code=self.trust_remote_code)
            except (OSError, ValueError, TypeError, ImportError) as err:
                raise JudgeError(f"judge.path={self.path} holds no tokenizer that loads: {first_line(err)}") from None
        return self._tokenizer

    def check(self) -> None:
        self.output_of(self.model_config())
        self.tokenizer()

    def check_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Format the first string prompt and the first chat prompt (a one-line error if one cannot be)."""
        firsts = {isinstance(p, str): p for p in reversed(list(prompts))}
        for prompt in firsts.values():
            self.encode(prompt, "Yes.")

    def fingerprint(self) -> Any:
        """The folder (each file's name, size and modification time: no weights read) and the settings."""
        folder = self.folder().resolve()
        files = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                       for p in folder.rglob("*") if p.is_file())
        return {"judge": self.name, "format": FORMAT_VERSION, "path": str(folder), "files": fingerprint(files),
                "output_index": self.output_index, "max_length": self.max_length, "dtype": str(self.torch_dtype())}

    # ------------------------------------------------------------------------------------ formatting

    def encode(self, prompt: Prompt, response: str) -> list[int]:
        """The token ids the reward model reads for one pair (untruncated)."""
        tok = self.tokenizer()
        if getattr(tok, "chat_template", None):
            text = self.render(conversation(prompt, response))
            return list(tok(text, add_special_tokens=False)["input_ids"])
        if isinstance(prompt, str):
            return list(tok(prompt, response)["input_ids"])
        raise JudgeError(f"the tokenizer of judge.path={self.path} has no chat template, so it cannot format the "
                         "data's chat prompts: use a reward model whose tokenizer has one")

    def render(self, messages: list[dict[str, str]]) -> str:
        try:
            out = self.tokenizer().apply_chat_template(messages, tokenize=False)
        except Exception as err:  # noqa: BLE001 - jinja raises its own errors (a role the template refuses)
            raise JudgeError(f"the chat template of judge.path={self.path} cannot format the data's prompts: "
                             f"{first_line(err)}") from None
        if isinstance(out, Mapping):
            out = out.get("text", out.get("prompt"))
        if isinstance(out, (list, tuple)) and len(out) == 1:
            out = out[0]
        if not isinstance(out, str):
            raise JudgeError(f"the chat template of judge.path={self.path} returned {type(out).__name__}, not text")
        return out

    # --------------------------------------------------------------------------------------- scoring

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return DTYPES[self.dtype]

    def model(self) -> Any:
        """The reward model, loaded on the first call (on the current GPU when there is one)."""
        if self._model is None:
            from transformers import AutoModelForSequenceClassification

            config = self.model_config()
            self._index = self.output_of(config)
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
            folder = self.folder()
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    folder, dtype=self.torch_dtype(), trust_remote_code=self.trust_remote_code)
            except (OSError, ValueError) as err:
                raise JudgeError(f"judge.path={self.path}: the reward model does not load: {first_line(err)}") from None
            self._model = model.to(device).eval()
            self._native_pad = text_config(model.config).pad_token_id
            log.info(f"judge: {self.path} ({type(model).__name__}, {self.torch_dtype()}, output {self._index}, "
                     f"on {device})")
        return self._model

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> JudgeScores:
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        truncated = sum(len(ids) > self.max_length for ids in encoded)
        encoded = [ids[: self.max_length] for ids in encoded]
        rewards = [0.0] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start: start + self.batch_size]
            for i, reward in zip(batch, self.forward([encoded[i] for i in batch])):
                rewards[i] = reward
        return JudgeScores(rewards, truncated)

    @torch.no_grad()
    def forward(self, rows: list[list[int]]) -> list[float]:
        """The reward of each row (token ids), padded on the right in one batch."""
        model = self.model()
        pad = self.pad_id(rows)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        device = next(model.parameters()).device
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        return logits[:, self._index].float().tolist()

    def pad_id(self, rows: list[list[int]]) -> int:
        """The model's own pad token; without one, an id no row of this batch holds, set as the model's for
        the batch, so that the model reads each row's score at its last token (as for one row alone)."""
        if self._native_pad is not None:
            return self._native_pad
        used = {t for row in rows for t in row}
        free = next(i for i in range(len(used) + 1) if i not in used)
        config = self._model.config
        for node in {id(config): config, id(text_config(config)): text_config(config)}.values():
            node.pad_token_id = free
        return free

    def close(self) -> None:
        if self._model is not None:
            self._model = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
