"""A word-level tokenizer for the course's captions (notebook 13): a closed vocabulary, no subwords.

Captions made by ``helpers.captions`` use a few dozen words, so each word is one token. Id 0 is the
padding token and id 1 the start token that begins every caption, so that even the empty caption,
the "no text" of classifier-free guidance, has one token to attend to. A caption longer than
``max_len - 1`` words, or a word outside the vocabulary, is refused with a message that names it (a
prompt typed by a reader must say what went wrong, never be silently changed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from helpers.validate import integer

__all__ = ["PAD", "START", "Tokenizer"]

PAD, START = "<pad>", "<s>"


class Tokenizer:
    """Words -> ids [N, max_len] (0 = padding, 1 = start) and back. ``words``: the vocabulary, without
    the two special tokens; ``max_len`` counts the start token."""

    def __init__(self, words: Sequence[str], max_len: int) -> None:
        integer("max_len", max_len, minimum=2)
        vocab = [PAD, START] + sorted(set(words))
        if any(not w or w != w.lower() or " " in w or w in (PAD, START) for w in words):
            raise ValueError("the vocabulary holds lower-case words without spaces, and not the special tokens")
        self.vocab, self.max_len = vocab, max_len
        self.ids = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts: Sequence[str], max_len: int | None = None) -> Tokenizer:
        """The vocabulary of ``texts``; ``max_len`` defaults to their longest, plus the start token."""
        words = [cls.split(t) for t in texts]
        return cls([w for ws in words for w in ws], max_len or 1 + max(len(ws) for ws in words))

    @staticmethod
    def split(text: str) -> list[str]:
        """Lower-case words separated by white space ("t-shirt" is one word)."""
        return text.lower().split()

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [N, max_len]: the start token, the words, then 0s."""
        out = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for i, text in enumerate(texts):
            words = self.split(text)
            if len(words) > self.max_len - 1:
                raise ValueError(f"{text!r} has {len(words)} words; this tokenizer takes at most {self.max_len - 1}")
            unknown = [w for w in words if w not in self.ids]
            if unknown:
                raise ValueError(f"unknown word {unknown[0]!r} in {text!r}; the vocabulary: {', '.join(self.vocab[2:])}")
            out[i, : 1 + len(words)] = torch.tensor([self.ids[START]] + [self.ids[w] for w in words], dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        """The texts of ids [N, L] (the special tokens dropped)."""
        return [" ".join(self.vocab[i] for i in row.tolist() if i > 1) for row in ids]

    def state(self) -> dict[str, Any]:
        """What a checkpoint records; ``from_state`` rebuilds the tokenizer."""
        return {"words": self.vocab[2:], "max_len": self.max_len}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tokenizer:
        return cls(state["words"], int(state["max_len"]))
