"""Training a small byte-level BPE tokenizer for models built from scratch (model=tiny).

Special tokens: `<pad>` (0), `<s>` (BOS, 1), `</s>` (EOS, 2) and the chat role markers `<|system|>`,
`<|user|>`, `<|assistant|>`. Plain text gets BOS prepended; chat follows a Zephyr-style template:
"<s><|user|>\\n{content}</s>\\n<|assistant|>\\n{content}</s>\\n", so string and chat data both work with
the tiny model. The result saves with `save_pretrained` and reloads with `AutoTokenizer.from_pretrained`.

The texts stream to the trainer in batches (`train_from_iterator`), so they need not be a list. The
trainer runs in a worker thread while the calling thread waits in short, interruptible steps: Ctrl-C
(KeyboardInterrupt) reaches the caller at once, and the worker stops taking texts at its next batch
(its last uninterruptible step, the merges on what it had counted, finishes in the background and is
discarded). Batching does not change the result: the trainer counts words, and counts do not depend on
how the texts arrive, so a tokenizer (and the cache key of its texts) is the same as before.
Exercised by `pytest tests/data/test_bpe_tokenizer.py`.
"""

from __future__ import annotations

import threading
from itertools import islice
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
ROLE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_MARKERS)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TEXTS_PER_BATCH = 1000  # texts handed to the trainer at a time: between batches it may be stopped
WAIT_STEP_S = 0.05  # how often the waiting thread wakes (a signal is handled at the next wake at most)


def _batches(texts: Iterable[str], stop: threading.Event) -> Iterator[list[str]]:
    """Lists of up to TEXTS_PER_BATCH texts, until the texts run out or `stop` is set."""
    it = iter(texts)
    while not stop.is_set():
        batch = list(islice(it, TEXTS_PER_BATCH))
        if not batch:
            return
        yield batch


def _train_interruptibly(tok: Tokenizer, texts: Iterable[str], trainer: trainers.Trainer) -> None:
    """`tok.train_from_iterator` in a worker thread; an exception in the waiting thread (Ctrl-C's
    KeyboardInterrupt) stops the worker's feed and propagates at once; the worker's own error is raised."""
    stop, failure = threading.Event(), []

    def work() -> None:
        try:
            tok.train_from_iterator(_batches(texts, stop), trainer=trainer)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            failure.append(e)

    worker = threading.Thread(target=work, name="bpe-trainer", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(WAIT_STEP_S)
    except BaseException:
        stop.set()
        raise
    if failure:
        raise failure[0]


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`, any iterable of strings, read once in order (any text encodes;
    rare bytes fall back to byte tokens). Ctrl-C interrupts it within about WAIT_STEP_S."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    _train_interruptibly(tok, texts, trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
