"""DNABERT-S tokenization in groups (engines.dnabert_tokens): the ids of `tokenizer.encode` per sequence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from virnucpro.engines.demo import _dnabert_tokenizer_json
from virnucpro.engines.dnabert_tokens import BatchTokenizer

SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
BASES = np.frombuffer(b"ACGT", np.uint8)


def trained_bpe(pre_tokenizer=True, vocab_size=600) -> Tokenizer:
    """A BPE trained the way DNABERT-2/S's was (Whitespace pre-tokenizer, their special tokens,
    [CLS] $A [SEP]), on a random genome with repeats, so merges are long and overlapping."""
    rng = np.random.default_rng(11)
    unit = rng.choice(BASES, 40).tobytes().decode()
    genome = "".join(unit * 3 if rng.random() < 0.2 else rng.choice(BASES, 120).tobytes().decode()
                     for _ in range(1500))
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    if pre_tokenizer:
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator([genome[i:i + 2000] for i in range(0, len(genome), 2000)], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                                                 ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    return tokenizer


def sequences(seed: int = 5) -> list[str]:
    """Frames' nucleotide slices of many lengths, repeats (long merges), and the awkward ones."""
    rng = np.random.default_rng(seed)
    seqs = [rng.choice(BASES, n).tobytes().decode() for n in rng.integers(1, 502, 700)]
    seqs += ["A" * 301, "AC" * 150, "ACGTACGTAC" * 30, "T", "GG"]
    awkward = ["ACGTNACGT", "N" * 12, "", "acgtACGT", "AC,GT", "AC GT", "ACG\tT", "ACGTRYKMSWBDHV", "ÉACG",
               "[CLS]ACGT", "ACGT[SEP]", ",", "ACGT-ACGT", "ACGT*"]
    for i, odd in enumerate(awkward):  # scattered among the plain ones
        seqs.insert(37 * i + 3, odd)
    return seqs


def per_sequence(tokenizer: Tokenizer, seqs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [tokenizer.encode(s).ids for s in seqs]
    return np.array([i for ids in encoded for i in ids], dtype=np.int64), np.array([len(e) for e in encoded])


@pytest.mark.parametrize("make", [lambda: trained_bpe(), lambda: trained_bpe(pre_tokenizer=False),
                                  lambda: Tokenizer.from_str(_dnabert_tokenizer_json())],
                         ids=["whitespace-pre-tokenizer", "no-pre-tokenizer", "demo-dnabert-s"])
def test_grouped_ids_equal_one_encode_per_sequence(make):
    tokenizer = make()
    batch = BatchTokenizer(tokenizer)
    assert batch.joins_sequences  # the grouped path is what is tested here
    seqs = sequences()
    flat, lengths = batch(seqs)
    want_flat, want_lengths = per_sequence(tokenizer, seqs)
    np.testing.assert_array_equal(lengths, want_lengths)
    np.testing.assert_array_equal(flat, want_flat)
    assert flat.dtype == lengths.dtype == np.int64
    plain = [s for s in seqs if s and s.isascii() and set(s) <= set("ACGT")]  # all on the grouped path
    np.testing.assert_array_equal(batch(plain)[0], per_sequence(tokenizer, plain)[0])
    awkward = [s for s in seqs if s not in plain]  # none on the grouped path
    np.testing.assert_array_equal(batch(awkward)[0], per_sequence(tokenizer, awkward)[0])
    assert batch([])[0].shape == batch([])[1].shape == (0,)


def test_merges_never_cross_the_joined_sequences():
    """Where one sequence's last letters and the next one's first would merge if the two were one
    word, the grouped ids still split exactly at each sequence."""
    tokenizer = trained_bpe()
    batch = BatchTokenizer(tokenizer)
    words = [s for s in sequences() if s and set(s) <= set("ACGT")]
    ids = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    crossing = [(a, b) for a, b in zip(words, words[1:]) if ids(a + b) != ids(a) + ids(b)]
    assert len(crossing) > 100  # joined without a separator, most neighbours would merge
    pairs = [s for pair in crossing for s in pair]
    flat, lengths = batch(pairs)
    want_flat, want_lengths = per_sequence(tokenizer, pairs)
    np.testing.assert_array_equal(lengths, want_lengths)
    np.testing.assert_array_equal(flat, want_flat)


def test_tokenizers_of_other_shapes_are_used_one_sequence_at_a_time():
    """A normalizer or BPE dropout could change what joining does: such tokenizers keep the
    per-sequence path, with the same ids."""
    lowercase = trained_bpe()
    lowercase.normalizer = normalizers.Lowercase()
    config = json.loads(trained_bpe().to_str())
    config["model"]["dropout"] = 0.5
    dropout = Tokenizer.from_str(json.dumps(config))
    for tokenizer in (lowercase, dropout):
        batch = BatchTokenizer(tokenizer)
        assert not batch.joins_sequences
    seqs = sequences()[:200]
    np.testing.assert_array_equal(BatchTokenizer(lowercase)(seqs)[0], per_sequence(lowercase, seqs)[0])
