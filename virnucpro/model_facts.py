"""The three models of a run, as data: which they are (ModelSpec), and what is known of them
without loading them (embedding widths by name, the chunk lengths a classifier may take).

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
