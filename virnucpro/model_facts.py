"""The three models of a run, as data: which they are (ModelSpec), and what is known of them
without loading them (embedding widths by name, the chunk lengths a classifier may take, the
seeds a training of one may take).

Ground floor: the planner, the model store, the stages and the command line read these facts;
nothing is imported here, so login-node commands stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelSpec:
    esm: str
    dnabert: str
    classifier: str
    demo: bool = False


# fair-esm's pretrained ESM-2 models (esm.pretrained) and their embedding widths
FAIR_ESM2_WIDTHS = {"esm2_t6_8M_UR50D": 320, "esm2_t12_35M_UR50D": 480, "esm2_t30_150M_UR50D": 640,
                    "esm2_t33_650M_UR50D": 1280, "esm2_t36_3B_UR50D": 2560, "esm2_t48_15B_UR50D": 5120}
# Embedding widths of the models that are known by name, so no 11 GB file is opened to check them.
KNOWN_WIDTHS = {"zhihan1996/DNABERT-S": 768, **FAIR_ESM2_WIDTHS}

DEFAULT_CHUNK_LENGTH = 500
# Chunk lengths a run may use: 10 codons at least; at most 1,000 codons, so that ESM-2 (which
# averages at most 1,022 residues) sees every residue of a frame.
MIN_CHUNK_LENGTH, MAX_CHUNK_LENGTH = 30, 3000


def chunk_length_problem(value) -> str | None:
    """Why `value` is no chunk length (a whole number from MIN to MAX; true/false are not numbers,
    though Python counts a bool as an int); None when it is one. The one check of a chunk length
    wherever it comes from: --chunk-length and a trained classifier's classifier.json alike."""
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


# A training's seed seeds numpy's generators and the held-out split's key mixing (holdout.py):
# an unsigned 64-bit number.
MAX_SEED = 2 ** 64 - 1


def seed_problem(value) -> str | None:
    """Why a value is no seed (None when it is one): a whole number from 0 to 2**64 - 1."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        return f"{value!r} is not a seed (a whole number from 0 to {MAX_SEED})"
    return None
