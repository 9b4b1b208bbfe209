"""The byte-level BPE tokenizer of a language model trained from scratch."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<|endoftext|>"
BOS = "<|im_start|>"
EOS = "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
"""The same three SmolLM2 uses: a chat turn ends with EOS, so generation stops there."""
STORE_FOLDER = "lm-tokenizer"
TOKENIZER_JSON = "tokenizer.json"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, as SmolLM2 writes it (without its default system message)."""


def train_bpe(texts: Iterable[str], *, vocab_size: int) -> str:
    """A byte-level BPE trained on `texts`, as tokenizer.json text: any string encodes
    (bytes are the fallback), and decoding gives the text back."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer.to_str()


def wrap(tokenizer_json: str) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around the trained one, with the chat template."""
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=Tokenizer.from_str(tokenizer_json),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=PAD,
        chat_template=CHAT_TEMPLATE,
    )


def run_tokenizer(
    texts: Callable[[], Iterable[str]],
    *,
    vocab_size: int,
    store: Path | None,
    from_main: Callable[[Callable[[], str]], str],
) -> PreTrainedTokenizerFast:
    """The run's tokenizer: the same on every rank and after every restart.

    BPE training breaks ties between equal pair counts in hash order, so two processes
    can disagree. Rank 0 trains it once and keeps it in `store/lm-tokenizer`
    (save_pretrained, beside the checkpoints, so a resumed run reads it back); the other
    ranks receive its JSON through `from_main`."""
    folder = store / STORE_FOLDER if store is not None else None

    def on_rank_0() -> str:
        if folder is not None and (folder / TOKENIZER_JSON).is_file():
            return (folder / TOKENIZER_JSON).read_text()
        text = train_bpe(texts(), vocab_size=vocab_size)
        if folder is not None:
            partial = folder.with_name(f".{folder.name}.{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            wrap(text).save_pretrained(partial)
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
            # What a restart reads back, byte for byte.
            return (folder / TOKENIZER_JSON).read_text()
        return text

    return wrap(from_main(on_rank_0))
