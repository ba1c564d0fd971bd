"""Proteins to ESM-2 token ids, vectorised: fair-esm ``Alphabet.encode`` semantics.

``Tokenizer(alphabet)(proteins)`` returns every protein's residue token ids concatenated into one
array (no BOS/EOS: the packer adds them), with each protein's offset and length. Plain residue
strings map character by character through a lookup table; anything else (``<mask>``,
whitespace, unknown letters) goes through ``alphabet.encode`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class Tokenized:
    ids: np.ndarray  # uint8/int16: every protein's residue token ids, concatenated
    offsets: np.ndarray  # int64 [N]: start of protein i in ids
    lengths: np.ndarray  # int64 [N]: residue tokens of protein i
    mask_counts: dict  # protein index -> number of <mask> tokens (only when > 0)


class Tokenizer:
    """fair-esm ``Alphabet.encode`` semantics, vectorised for plain residue strings.

    A string made only of one-character alphabet tokens (the 20 amino acids, X, B, U, Z, O, '.',
    '-') maps character by character, which is what ``Alphabet.encode`` returns for it; anything
    else (special tokens such as ``<mask>``, whitespace, unknown letters) goes through
    ``alphabet.encode`` itself, and characters the alphabet cannot encode raise ValueError.
    """

    def __init__(self, alphabet):
        self.alphabet = alphabet
        self.dtype = np.uint8 if len(alphabet) <= 255 else np.int16
        lut = np.full(256, -1, dtype=np.int16)
        for tok, idx in alphabet.tok_to_idx.items():
            if len(tok) == 1 and ord(tok) < 256:
                lut[ord(tok)] = idx
        self.lut = lut
        self.pad_idx = alphabet.padding_idx
        self.mask_idx = alphabet.mask_idx

    def _slow(self, i: int, s: str) -> np.ndarray:
        try:
            enc = self.alphabet.encode(s)
        except KeyError as e:
            raise ValueError(
                f"protein #{i} contains {e.args[0]!r}, which the ESM alphabet cannot encode") from None
        enc = np.asarray(enc, dtype=np.int64)
        if (enc == self.pad_idx).any():
            raise ValueError(f"protein #{i} contains the padding token")
        return enc

    def __call__(self, proteins: Sequence[str]) -> Tokenized:
        n_seq = len(proteins)
        for i, s in enumerate(proteins):
            if not isinstance(s, str):
                raise TypeError(f"protein #{i} is {type(s).__name__}, expected str")
        lengths = np.fromiter((len(s) for s in proteins), dtype=np.int64, count=n_seq)
        joined = "".join(proteins)
        special: set[int] = set()
        if not joined.isascii():
            special = {i for i, s in enumerate(proteins) if not s.isascii()}
            joined = "".join("" if i in special else s for i, s in enumerate(proteins))
            for i in special:
                lengths[i] = 0
        raw = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        mapped = self.lut[raw]
        ends = np.cumsum(lengths)
        offsets = ends - lengths
        bad = np.flatnonzero(mapped < 0)
        if len(bad):
            special.update(np.unique(np.searchsorted(ends, bad, side="right")).tolist())
        ids = mapped.astype(self.dtype)
        mask_counts: dict = {}
        if special:
            extra = []
            pos = len(ids)
            for i in sorted(special):
                enc = self._slow(i, proteins[i])
                offsets[i] = pos
                lengths[i] = len(enc)
                pos += len(enc)
                extra.append(enc.astype(self.dtype))
                m = int((enc == self.mask_idx).sum())
                if m:
                    mask_counts[i] = m
            ids = np.concatenate([ids] + extra)
        return Tokenized(ids, offsets, lengths, mask_counts)
