"""Nucleotide sequences to DNABERT-S token ids: `tokenizer.encode(s).ids` of every sequence, with
one Encoding object per 64 sequences instead of one per sequence.

``BatchTokenizer(tokenizer)(seqs)`` returns (flat ids int64, token count of each sequence int64),
[CLS] ... [SEP] included. The per-sequence Encoding objects (and the Python lists of their ids)
cost as much as a third of the BPE itself (~7 s of a 1M-read run on 2 cores, single-threaded
under the GIL). So sequences are joined with a separator that the BPE cannot merge with anything
and that always becomes one token of its own, encoded in groups, and cut again at the separators.

Why the ids are the same: BPE merges within a pre-token only. A tokenizer qualifies when it has no
normalizer, a deterministic BPE model (no dropout) and no pre-tokenizer or the Whitespace one, under
which a sequence of ASCII letters is exactly one pre-token; the joined copy pre-tokenizes with
Whitespace, which cuts "ACG,TTA" into "ACG" "," "TTA", so every sequence is still exactly one
pre-token, merged as before. Only letters that are tokens of their own take this path, so no
sequence yields the separator's token ([UNK] or its own). The special tokens the post-processor adds around a sequence are found by encoding
probes both ways, and the whole construction is checked at load on probe sequences against the
tokenizer itself; a tokenizer that does not qualify or fails the check, and every sequence with
another character (N where the vocabulary lacks it, lowercase, punctuation), or empty, goes
through `encode_batch` as before.
"""

from __future__ import annotations

import json
import re
from itertools import chain
from typing import Sequence

import numpy as np

SEPARATOR = ","
GROUP = 64  # sequences per joined string: fewer objects, yet enough strings for the Rust threads


class BatchTokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        # the joined-sequence tokenizer, when this tokenizer qualifies (None: one by one)
        letters, self.joined = _joined_tokenizer(tokenizer)
        if self.joined is not None:
            self._encode_joined = getattr(self.joined, "encode_batch_fast", self.joined.encode_batch)
            self.prefix, self.suffix = _specials(tokenizer, self.joined, letters[0] * 5)
            self.separator_id = self.joined.encode(SEPARATOR, add_special_tokens=False).ids[0]
            self._outside = re.compile(f"[^{re.escape(letters)}]")
            if not self._agrees_on_probes(letters):
                self.joined = None

    @property
    def joins_sequences(self) -> bool:
        return self.joined is not None

    def __call__(self, seqs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        seqs = list(seqs)
        if self.joined is None or not seqs:
            return self.one_by_one(seqs)
        plain = self._plain(seqs)
        if plain.all():
            return self._joined_ids(seqs)
        lengths = np.zeros(len(seqs), dtype=np.int64)
        fast = np.flatnonzero(plain)
        slow = np.flatnonzero(~plain)
        flat_fast, lengths[fast] = self._joined_ids([seqs[i] for i in fast.tolist()])
        flat_slow, lengths[slow] = self.one_by_one([seqs[i] for i in slow.tolist()])
        # interleave the two flat arrays back into input order
        source = np.repeat(plain, lengths)
        flat = np.empty(int(lengths.sum()), dtype=np.int64)
        flat[source] = flat_fast
        flat[~source] = flat_slow
        return flat, lengths

    def one_by_one(self, seqs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The reference: one Encoding per sequence."""
        encoded = [e.ids for e in self._encode(list(seqs))]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
        return flat, lengths

    def _plain(self, seqs: list[str]) -> np.ndarray:
        """Which sequences take the joined path: non-empty, only letters that are tokens."""
        plain = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs)) > 0
        joined = "".join(seqs)
        if not self._outside.search(joined):
            return plain
        for i, s in enumerate(seqs):
            if self._outside.search(s):
                plain[i] = False
        return plain

    def _joined_ids(self, seqs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not seqs:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        texts = [SEPARATOR.join(seqs[a:a + GROUP]) + SEPARATOR for a in range(0, len(seqs), GROUP)]
        ids = np.fromiter(chain.from_iterable(e.ids for e in self._encode_joined(texts, add_special_tokens=False)),
                          dtype=np.int64)
        cuts = np.flatnonzero(ids == self.separator_id)
        if len(cuts) != len(seqs):
            raise RuntimeError(f"DNABERT-S tokenizer: {len(cuts)} separators for {len(seqs)} sequences")
        core = np.diff(cuts, prepend=-1) - 1
        before, after = len(self.prefix), len(self.suffix)
        lengths = core + before + after
        ends = np.cumsum(lengths)
        starts = ends - lengths
        head = starts[:, None] + np.arange(before)
        tail = (ends - after)[:, None] + np.arange(after)
        flat = np.empty(int(ends[-1]), dtype=np.int64)
        flat[head], flat[tail] = self.prefix, self.suffix
        inner = np.ones(len(flat), dtype=bool)
        inner[head] = inner[tail] = False
        flat[inner] = np.delete(ids, cuts)
        return flat, lengths

    def _agrees_on_probes(self, letters: str) -> bool:
        rng = np.random.default_rng(0)
        alphabet = np.frombuffer(letters.encode("ascii"), np.uint8)
        probes = [rng.choice(alphabet, n).tobytes().decode("ascii") for n in (1, 2, 3, 5, 8, 13, 40, 150, 301, 500)
                  for _ in range(3)]
        probes += [letters[0] * n for n in (1, 2, 7, 64)]
        flat, lengths = self.one_by_one(probes)
        got = self._joined_ids(probes)
        return np.array_equal(got[1], lengths) and np.array_equal(got[0], flat)


def _joined_tokenizer(tokenizer):
    """(the letters that are tokens of their own, the copy that encodes joined sequences) or ("", None)."""
    from tokenizers import Tokenizer, pre_tokenizers

    text = tokenizer.to_str()
    config = json.loads(text)
    model = config.get("model") or {}
    pre = config.get("pre_tokenizer")
    if (model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0) or config.get("normalizer") is not None
            or (pre is not None and pre.get("type") != "Whitespace")
            or any(SEPARATOR in token.get("content", "") for token in config.get("added_tokens") or [])):
        return "", None
    vocab = model.get("vocab") or {}
    letters = "".join(sorted(t for t in vocab if len(t) == 1 and t.isascii() and t.isalpha()))
    if not letters:
        return "", None
    joined = Tokenizer.from_str(text)
    joined.pre_tokenizer = pre_tokenizers.Whitespace()  # letters | "," | letters ...
    joined.no_truncation()
    joined.no_padding()
    if len(joined.encode(SEPARATOR, add_special_tokens=False).ids) != 1:
        return "", None
    return letters, joined


def _specials(tokenizer, joined, probe: str) -> tuple[list[int], list[int]]:
    """(ids before a sequence, ids after it), from a probe encoded both ways."""
    empty = tokenizer.encode("").ids
    full = tokenizer.encode(probe).ids
    core = joined.encode(probe, add_special_tokens=False).ids
    for split in range(len(empty) + 1):
        if empty[:split] + core + empty[split:] == full:
            return empty[:split], empty[split:]
    return [], []  # the probe check then fails and the tokenizer is used one by one
