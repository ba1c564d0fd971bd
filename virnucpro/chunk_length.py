"""The chunk lengths a run may use, and the one check of a chunk length wherever it comes from: the
--chunk-length option and a trained classifier's description (classifier.json) alike. No imports:
login-node commands and torch-free readers use it."""

from __future__ import annotations

DEFAULT_CHUNK_LENGTH = 500
# 10 codons at least; at most 1,000 codons, so that ESM-2 (which averages at most 1,022 residues)
# sees every residue of a frame.
MIN_CHUNK_LENGTH, MAX_CHUNK_LENGTH = 30, 3000


def chunk_length_problem(value) -> str | None:
    """Why `value` is no chunk length (a whole number from MIN to MAX; true/false are not numbers,
    though Python counts a bool as an int); None when it is one."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_CHUNK_LENGTH <= value <= MAX_CHUNK_LENGTH:
        return f"{value!r} is not a chunk length from {MIN_CHUNK_LENGTH} to {MAX_CHUNK_LENGTH}"
    return None


def parse_chunk_length(text: str) -> int:
    """--chunk-length N; ValueError with the reason when N is no chunk length."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if chunk_length_problem(value):
        raise ValueError(chunk_length_problem(text))
    return value
