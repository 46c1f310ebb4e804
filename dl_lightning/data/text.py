"""A small, dependency-free tokenizer shared by training and predict-time code.

The vocabulary is stored in :class:`~dl_lightning.data.spec.DataSpec` (``spec.vocab``), so any code holding a
spec can turn raw strings into the exact token ids the model was trained on with :func:`encode`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1

# Words with an optional apostrophe part ("don't", "it's"); \w is Unicode-aware, so accents stay in words.
_WORD = re.compile(r"\w+(?:'\w+)?")


def tokenize(text: str) -> list[str]:
    """Lowercased words of ``text``; punctuation and whitespace are dropped."""
    return _WORD.findall(text.lower())


def build_vocab(texts: Iterable[str], max_vocab: int) -> tuple[str, ...]:
    """Index → token, at most ``max_vocab`` entries, ``<pad>`` at 0 and ``<unk>`` at 1.

    The rest are the most frequent tokens of ``texts``; ties are broken alphabetically, so the same texts
    always give the same vocabulary whatever their order.
    """
    if max_vocab < 2:
        raise ValueError(f"max_vocab must be at least 2 (room for {PAD} and {UNK}), got {max_vocab}")
    counts = Counter(token for text in texts for token in tokenize(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return (PAD, UNK, *(token for token, _ in ranked[: max_vocab - 2]))


def encode(texts: Iterable[str], vocab: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids, int64 of shape ``(N, max_len)``: truncated to ``max_len``, right-padded with 0.

    Tokens not in ``vocab`` map to 1 (``<unk>``).
    """
    index = {token: i for i, token in enumerate(vocab)}
    rows = [[index.get(token, UNK_ID) for token in tokenize(text)][:max_len] for text in texts]
    ids = np.full((len(rows), max_len), PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids
