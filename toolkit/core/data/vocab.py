"""Token vocabulary with the four specials every rnnkit model shares.

Ids are fixed: <pad>=0 (the embedding's padding row), <unk>=1, <bos>=2, <eos>=3; then tokens by
descending frequency, ties broken by first appearance so a vocabulary is reproducible.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from toolkit.core.errors import DataError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


class Vocabulary:
    def __init__(self, tokens: Sequence[str]):
        if tuple(tokens[:4]) != SPECIALS:
            raise DataError(f"a vocabulary must start with {', '.join(SPECIALS)}; got {list(tokens[:4])}")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise DataError("a vocabulary must not repeat a token")
        # What input text may map to: everything but <pad>. A literal "<pad>" in the data is an
        # unknown token; as id 0 it would read the embedding's padding row, which is zero and
        # never trained, and look like padding to anything that masks on id 0.
        self._readable = {t: i for t, i in self.index.items() if i != PAD_ID}

    @classmethod
    def build(cls, sequences: Iterable[Iterable[str]], min_freq: int = 1, max_size: int | None = None) -> Vocabulary:
        counts: Counter[str] = Counter()
        for seq in sequences:
            counts.update(seq)
        for special in SPECIALS:
            counts.pop(special, None)
        # Counter keeps first-insertion order, and sorted() is stable: ties stay in that order.
        ranked = [t for t, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n >= min_freq]
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *ranked])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Token strings to int64 ids; unknown tokens (a literal "<pad>" too) become <unk>."""
        get = self._readable.get
        return np.fromiter((get(t, UNK_ID) for t in tokens), dtype=np.int64)

    def count_unknown(self, tokens: Iterable[str]) -> int:
        return sum(1 for t in tokens if t not in self._readable)

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def to_json(self) -> list[str]:
        return list(self.tokens)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            tokens = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read vocabulary: {e}", path=str(path)) from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError("a vocabulary file must be a JSON list of token strings", path=str(path))
        return cls(tokens)
