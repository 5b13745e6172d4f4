"""The tokenizer: byte-level BPE trained with Hugging Face `tokenizers`.

Byte-level: text is split GPT-2 style (ByteLevel pre-tokenizer, no prefix space, no normalizer)
and every UTF-8 byte has a token, so any string, English or Chinese, round-trips exactly:
decode(encode(s)) == s. Three special tokens come first, with fixed ids:

    0 <|pad|>  padding (never in the training stream)
    1 <|eot|>  end of turn: closes every speaker turn of a dialogue
    2 <|eod|>  end of document (a dialogue, a line or paragraph of a .txt, a row of a dataset)

They are matched in raw text, so a document can carry its turn markers inline
("hi<|eot|>hello<|eot|>"); the model learns to emit them like any other token.

    tok = train_tokenizer(texts, vocab_size=6144)
    ids = tok.encode("hello<|eot|>")                  # [.., tok.eot_id]
    tok.save(path); Tokenizer.load(path)              # one tokenizer.json, carried by checkpoints
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD, EOT, EOD = "<|pad|>", "<|eot|>", "<|eod|>"
SPECIAL_TOKENS = (PAD, EOT, EOD)  # ids 0, 1, 2
DEFAULT_VOCAB_SIZE = 6144  # see trainer/model/config.py for why this size
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # the specials and one token per byte


class Tokenizer:
    """A trained byte-level BPE with HyQuT's special tokens; wraps a `tokenizers.Tokenizer`."""

    def __init__(self, tok: tokenizers.Tokenizer):
        ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
        assert ids == list(range(len(SPECIAL_TOKENS))), f"special tokens {SPECIAL_TOKENS} must have ids 0.., got {ids}"
        self.tok = tok
        self.pad_id, self.eot_id, self.eod_id = ids

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ids, special tokens written out (so decode(encode(s)) == s)."""
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def to_json(self) -> str:
        return self.tok.to_str()

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        return cls(tokenizers.Tokenizer.from_str(text))

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (a concurrent reader sees the old file or the new)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls(tokenizers.Tokenizer.from_file(str(path)))

    def fingerprint(self) -> str:
        """A short hash of the whole tokenizer (vocabulary, merges, settings)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


def train_tokenizer(
    texts: Iterable[str] | Iterable[list[str]], vocab_size: int = DEFAULT_VOCAB_SIZE, length: int | None = None
) -> Tokenizer:
    """Train a byte-level BPE of at most vocab_size tokens on texts (strings, or batches of them;
    a small corpus may give fewer tokens: read `.vocab_size`). `length` is the number of texts."""
    if not (isinstance(vocab_size, int) and vocab_size >= MIN_VOCAB_SIZE):
        raise ValueError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE}, got {vocab_size!r} (change --vocab-size)")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=length)
    return Tokenizer(tok)
