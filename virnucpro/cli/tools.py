"""`translate`, `embed` and `demo-models`: one file through one step of the pipeline, and the demo models."""

from __future__ import annotations

import os
from pathlib import Path

from .. import console
from ..atomic import atomic_open
from ..errors import InputError
from ..fasta import ESM_LETTERS, NUCLEOTIDE, PROTEIN, read_records, write_translation
from ..modelstore.demo import is_demo_model
from ..modelstore.resolve import require_here
from .run import DEMO_WARNING, check_device


def cmd_translate(args) -> int:
    source = Path(args.fasta).resolve()
    dna_out, protein_out = Path(args.nucleotide_out).resolve(), Path(args.protein_out).resolve()
    if dna_out == protein_out:
        raise InputError(f"{args.nucleotide_out}: given as both --nucleotide-out and --protein-out; "
                         "give two different files")
    for flag, out in (("--nucleotide-out", dna_out), ("--protein-out", protein_out)):
        if out == source:
            raise InputError(f"{out}: {flag} is the input FASTA itself; write the output to another file")

    with atomic_open(args.nucleotide_out) as dna, atomic_open(args.protein_out) as protein:
        write_translation(args.fasta, args.chunk_length, dna, protein)
    return 0


def cmd_embed(args) -> int:
    # torch and h5py: only once the command line is checked (translate needs neither)
    from ..stages.embedding import resolve_device
    from ..storage import write_matrix

    check_device(args.device, True, precision=args.precision)
    spec = str(args.model)
    if (spec.startswith(("/", ".", "~")) or spec.endswith(".pt")) and not Path(spec).expanduser().exists():
        raise InputError(f"{spec}: --model not found; give an existing {'.pt file' if args.kind == 'esm2' else 'model folder'} "
                         "or a hub name")
    fetched = f"DIR/{spec}.pt" if args.kind == "esm2" else f"DIR/{spec.rsplit('/', 1)[-1]}"
    require_here("esm" if args.kind == "esm2" else "dnabert", spec, args.allow_download, f"pass --model {fetched}")
    demo = is_demo_model(spec)
    if demo:
        console.warn(DEMO_WARNING)
    if Path(args.out).is_dir():
        raise InputError(f"{args.out}: --out is a folder; give the HDF5 file to write, e.g. {Path(args.out) / 'embeddings.h5'}")
    if not Path(args.fasta).is_file():
        raise InputError(f"{args.fasta}: FASTA file not found; check the path")
    # proteins for ESM-2, nucleotides for DNABERT-S: the one FASTA reader, validating either
    records = list(read_records(args.fasta, PROTEIN if args.kind == "esm2" else NUCLEOTIDE))
    if args.kind == "esm2":
        encodable = frozenset(ESM_LETTERS)
        unknown = next(((name, sorted(set(seq) - encodable)) for name, seq in records if not encodable.issuperset(seq)), None)
        if unknown and "*" in unknown[1]:
            raise InputError(f"{args.fasta}: protein '{unknown[0]}' contains '*' (a stop); ESM-2 has no token for it "
                             "and VirNucPro embeds only stop-free frames: remove the '*' and run again")
        if unknown:
            raise InputError(f"{args.fasta}: protein '{unknown[0]}' contains {', '.join(map(repr, unknown[1]))}, which ESM-2 cannot "
                             f"encode (its alphabet: {ESM_LETTERS}, upper case only); replace those letters "
                             "(X for an unknown residue) and run again")
    ids = [r[0] for r in records]
    seqs = [r[1] for r in records]
    device = resolve_device(args.device)
    if args.kind == "esm2":
        from ..stages.esm2 import load_engine  # fair-esm: only for ESM-2
        packing = args.packing and os.environ.get("VIRNUCPRO_DISABLE_PACKING", "") in ("", "0")
        engine = load_engine(args.model, device, args.precision, packing, args.token_budget, compile=args.compile,
                             residual=args.esm_residual)
        matrix = engine.embed(seqs)
    else:
        from ..engines.dnabert import load_dnabert_engine  # transformers: only for DNABERT-S
        embedder = load_dnabert_engine(args.model, device, precision="fp32" if args.precision == "auto" else args.precision,
                                       remote_code=args.dnabert_remote_code, token_budget=args.token_budget,
                                       allow_download=args.allow_download)
        matrix = embedder.embed(seqs)
    write_matrix(args.out, ids, matrix, attrs={"model": args.model, "kind": args.kind, **({"demo_model": True} if demo else {})})
    console.info(f"wrote {len(ids)} embeddings of dimension {matrix.shape[1]} to {args.out}")
    return 0


def cmd_demo_models(args) -> int:
    from ..engines.demo import write_demo_models  # torch: not for translate

    paths = write_demo_models(args.directory)
    console.warn(DEMO_WARNING)
    for kind, path in paths.items():
        console.info(f"  {kind}: {path}")
    return 0
