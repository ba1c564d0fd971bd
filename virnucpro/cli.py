"""`virnucpro-slurm`: run VirNucPro step-first, locally or as SLURM array jobs."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path

from . import __version__, console
from .chunk_length import parse_chunk_length
from .errors import RunInterrupted, VirnucproError
from .orchestration.config import DEFAULT_CHUNK_LENGTH, MAX_CHUNK_LENGTH, MIN_CHUNK_LENGTH
from .pipeline import EVALUATION, KINDS, PREDICTION, TRAINING

# Each module here defines register(subparsers, add_common, add_run_options) for its commands.
COMMAND_MODULES: list[str] = ["virnucpro.slurm_cli", "virnucpro.report.command", "virnucpro.modelstore.command"]

EXAMPLE_DIR = Path(__file__).parent / "data" / "example"
DEMO_WARNING = ("DEMO MODELS: random weights; their predictions are MEANINGLESS. "
                "Use the real VirNucPro classifier, ESM-2 3B and DNABERT-S for real calls.")


# ---------------------------------------------------------------- shared options

def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="print errors only")
    parser.add_argument("--verbose", "-v", action="store_true", help="print debug messages")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def _add_model_options(parser: argparse.ArgumentParser, kind: str) -> None:
    group = parser.add_argument_group("models")
    if kind in ("predict", "any"):
        group.add_argument("--demo", action="store_true",
                           help="run on the bundled example reads with tiny random demo models (no inputs needed)")
    group.add_argument("--models", type=Path, metavar="DIR", help="a folder with esm2_*.pt, a DNABERT-S folder and 300_/500_model.pth")
    group.add_argument("--esm-model", metavar="NAME|PT", help="fair-esm name (default esm2_t36_3B_UR50D) or local .pt")
    group.add_argument("--dnabert-model", metavar="ID|DIR", help="HF id (default zhihan1996/DNABERT-S) or local folder")
    if kind == "train":
        group.add_argument("--chunk-length", type=_chunk_length, metavar="N", default=DEFAULT_CHUNK_LENGTH,
                           help=f"chunk length to train on ({MIN_CHUNK_LENGTH}..{MAX_CHUNK_LENGTH}; default "
                                f"{DEFAULT_CHUNK_LENGTH}; e.g. 150 for short reads)")
        return
    group.add_argument("--classifier", metavar="FILE",
                       help="VirNucPro 300_model.pth or 500_model.pth, or a classifier.safetensors made by 'train'")
    group.add_argument("--chunk-length", type=_chunk_length, metavar="N",
                       help="default: the classifier's (classifier.json, else its file name), else 500")
    group.add_argument("--force-chunk-length", action="store_true", help="allow a chunk length that contradicts the classifier name")


def _add_run_options(parser: argparse.ArgumentParser, kind: str = "predict") -> None:
    """The options of a run of this kind (predict, train, evaluate; any: submit takes every kind)."""
    inputs = {"predict": "text file listing FASTA files (plain or .gz), one per line",
              "any": "inputs list (a prediction) or LABELS file (--kind train/evaluate); none: the workdir's run"}
    parser.add_argument("inputs", nargs="?" if kind in ("predict", "any") else None, type=Path, metavar=(
        "INPUTS" if kind in ("predict", "any") else "LABELS"),
        help=inputs.get(kind, "tab-separated FASTA, label (virus or other) and optional GenBank file, one input per line"))
    parser.add_argument("--workdir", "-w", type=Path, help="where state, embeddings and results go (default: ./virnucpro-run)")
    _add_model_options(parser, kind)
    if kind in ("train", "any"):
        training = parser.add_argument_group("training")
        training.add_argument("--holdout", type=_fraction, default=0.1, metavar="F",
                              help="fraction of the sequences (reads, records) held out to stop early and measure (default 0.1)")
        training.add_argument("--seed", type=int, default=42, help="seed of the split and the shuffles (default 42)")
    if kind in ("evaluate", "any"):
        parser.add_argument("--target-fdr", type=_fraction, default=0.05, metavar="F",
                            help="name the lowest --min-score whose false-discovery rate is at most F (default 0.05)")
    if kind == "any":
        parser.add_argument("--kind", choices=KINDS, default=PREDICTION,
                            help="with an inputs argument: what it is (predict: an inputs list; train, evaluate: a LABELS file)")
    tuning = parser.add_argument_group("execution")
    tuning.add_argument("--shards", type=_positive_int, help="number of shards (default: input size / 50 Mbp, at least 1)")
    tuning.add_argument("--device", default="auto", type=_device, help="auto, cpu, cuda or cuda:N (default auto)")
    tuning.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="ESM-2 precision (default fp16 on CUDA, fp32 on CPU; VIRNUCPRO_DISABLE_FP16=1 forces fp32)")
    tuning.add_argument("--no-packing", dest="packing", action="store_false",
                        help="use fair-esm's padded forward instead of the packed engine (also VIRNUCPRO_DISABLE_PACKING=1)")
    tuning.add_argument("--esm-token-budget", type=_positive_int, help="tokens per packed ESM-2 batch (default: from free GPU memory)")
    _add_esm_engine_options(tuning)
    tuning.add_argument("--dnabert-token-budget", type=_positive_int, help="padded tokens per DNABERT-S batch")
    tuning.add_argument("--checkpoint-tokens", type=_positive_int, help="tokens between checkpoints of the embedding stages")
    tuning.add_argument("--dnabert-precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="DNABERT-S precision (default fp32, the original's numbers; fp16/bf16 need CUDA)")
    tuning.add_argument("--dnabert-remote-code", action="store_true",
                        help="run the DNABERT model folder's own Python code (trust_remote_code) instead of the native engine")
    tuning.add_argument("--embedding-dtype", default="float32", choices=("float32", "float16"),
                        help="dtype of stored embeddings (default float32, byte-compatible; float16 halves their size)")
    tuning.add_argument("--trust-model-pickles", action="store_true",
                        help="unpickle model files without restrictions: RUNS CODE FROM THE FILES; only for files you trust")
    tuning.add_argument("--allow-download", action="store_true",
                        help="let tasks download hub models themselves (only where compute nodes have internet)")
    tuning.add_argument("--restart", action="store_true", help="discard this workdir's results and start again")
    if kind == "train":
        return
    calls = parser.add_argument_group("read calls")
    calls.add_argument("--min-score", type=_score, metavar="T",
                       help="call a read virus iff its max_virus_score >= T (0..1); default: virus iff at least one "
                            "chunk is viral by the original per-chunk rule. Changing it re-runs consensus only")
    calls.add_argument("--compress", action="store_true",
                       help="gzip each input's result files (prediction_results.txt.gz, ...); "
                            "changing it re-runs consensus only")


def _add_esm_engine_options(group) -> None:
    """The packed ESM-2 engine's compile and residual choices (run, submit, embed)."""
    group.add_argument("--compile", dest="compile", action="store_true", default=None,
                       help="torch.compile the packed ESM-2 engine's dense parts (default: on CUDA only)")
    group.add_argument("--no-compile", dest="compile", action="store_false", help="run the packed ESM-2 engine eager")
    group.add_argument("--esm-residual", default="fp32", choices=("fp32", "compute"),
                       help="packed ESM-2 residual stream at fp16/bf16: fp32 (default, closer to the original) or "
                            "compute (the GEMMs' dtype: less memory traffic)")


def _positive_int(text: str) -> int:
    """An option that counts something (shards, tokens): a whole number >= 1, refused at parse time."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


WATCH_MIN_SECONDS = 0.5  # a redraw folds every state record: faster would be a busy loop on a big run


def positive_seconds(text: str) -> float:
    """A duration option: a finite number of seconds > 0, refused at parse time (-1, nan, inf)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _watch_seconds(text: str) -> float:
    """--watch SECONDS; tiny values are raised to the minimum."""
    return max(positive_seconds(text), WATCH_MIN_SECONDS)


def _chunk_length(text: str) -> int:
    try:
        return parse_chunk_length(text)  # the same check as a classifier description's chunk_length
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1 (both excluded)")
    return value


def _device(text: str) -> str:
    """auto, cpu, cuda or cuda:N; anything else (tpu, mps, cuda:x) is refused at parse time."""
    head, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (head == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda or cuda:N")


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a score between 0 and 1")
    return value


def check_device(device: str, here: bool, **precisions: str) -> None:
    """fp16/bf16 need CUDA: refused before any work with --device cpu and, where the work runs on
    this machine (run, embed), with --device auto or cuda when it has no CUDA GPU. `submit` plans for
    GPU nodes, where auto means CUDA: it passes here=False. torch is imported only to decide that."""
    reduced = next((f"--{flag.replace('_', '-')} {value}" for flag, value in precisions.items()
                    if value in ("fp16", "bf16")), None)
    if device == "cpu" and reduced:
        raise VirnucproError(f"{reduced} needs a CUDA GPU, but --device is cpu; use fp32 on CPU, or --device cuda")
    if not here or device == "cpu" or (device == "auto" and not reduced):
        return
    import torch

    if torch.cuda.is_available():
        return
    if device == "auto":
        raise VirnucproError(f"{reduced} needs a CUDA GPU, but this machine has none (--device auto would run on the "
                             "CPU); use fp32 here, or run on a GPU machine (a whole run: virnucpro-slurm submit)")
    raise VirnucproError(f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu or auto")


def warn_if_demo(config) -> None:
    """Demo models, whatever flag brought them in (plan.resolve_models decides)."""
    if config.models.demo:
        console.warn(DEMO_WARNING)


def run_request(args: argparse.Namespace):
    from .orchestration.plan import RunRequest

    here = args.command != "submit"
    check_device(args.device, here, precision=args.precision, dnabert_precision=args.dnabert_precision)

    inputs = args.inputs
    models_dir = args.models
    workdir = args.workdir or Path("virnucpro-run")
    demo = getattr(args, "demo", False)
    if inputs is None and not demo and not here and Path(workdir, "run.json").exists():
        return RunRequest.of_run(workdir)  # submit --workdir W: the run W holds, of whatever kind
    if demo:
        from .engines.demo import write_demo_models
        inputs = inputs or EXAMPLE_DIR / "inputs.txt"
        models_dir = models_dir or workdir / "demo-models"
        if not (models_dir / "README.txt").exists():
            write_demo_models(models_dir)
    if inputs is None:
        raise VirnucproError("no inputs list given: 'virnucpro-slurm run inputs.txt --workdir W ...' (or --demo)")
    return RunRequest(
        inputs_list=inputs, workdir=workdir, models_dir=models_dir, esm_model=args.esm_model,
        dnabert_model=args.dnabert_model, classifier=getattr(args, "classifier", None), chunk_length=args.chunk_length,
        force_chunk_length=getattr(args, "force_chunk_length", False), shards=args.shards, precision=args.precision,
        packing=args.packing, device=args.device, esm_token_budget=args.esm_token_budget,
        dnabert_token_budget=args.dnabert_token_budget, checkpoint_tokens=args.checkpoint_tokens,
        restart=args.restart, demo=demo, min_score=getattr(args, "min_score", None),
        compress=getattr(args, "compress", False),
        dnabert_precision=args.dnabert_precision, dnabert_remote_code=args.dnabert_remote_code,
        embedding_dtype=args.embedding_dtype, trust_model_pickles=args.trust_model_pickles,
        allow_download=args.allow_download, compile=getattr(args, "compile", None),
        esm_residual=getattr(args, "esm_residual", "fp32"), kind=run_kind(args), holdout=getattr(args, "holdout", 0.1),
        seed=getattr(args, "seed", 42), target_fdr=getattr(args, "target_fdr", 0.05),
    )


def run_kind(args: argparse.Namespace) -> str:
    """The kind of run a command line asks for: its command's (train, evaluate), or submit's --kind."""
    return args.command if args.command in (TRAINING, EVALUATION) else getattr(args, "kind", PREDICTION)


# ---------------------------------------------------------------- commands

def cmd_run(args) -> int:
    from .orchestration.plan import plan_run
    from .orchestration.runner import StageContext, StopFlag, run_locally

    from .orchestration.writer import WorkdirWriter

    stop = StopFlag().install()  # before anything is written: a SIGTERM now still ends cleanly
    request = run_request(args)
    from .modelstore.resolve import check_for_run
    check_for_run(request)
    with WorkdirWriter(request.workdir, "virnucpro-slurm run") as writer:  # held until the run ends
        workdir, config, state = plan_run(request, writer)
        console.log_to_file(workdir.run_log())
        warn_if_demo(config)
        console.info(f"workdir {workdir.root}: {len(config.inputs)} input(s), {config.shards} shard(s), "
                     f"chunk length {config.chunk_length}")
        ctx = StageContext(workdir=workdir, config=config, device=config.device, stop_requested=stop)
        run_locally(ctx, state)
    warn_if_demo(config)
    if config.kind == TRAINING:
        console.info(("done", "bold green"), f": classifier {workdir.classifier_weights} "
                     f"(described in {workdir.classifier_meta.name} beside it)")
        console.info(f"  use it: virnucpro-slurm run INPUTS -w W --classifier {workdir.classifier_weights} "
                     f"--esm-model {config.models.esm} --dnabert-model {config.models.dnabert}")
        return 0
    console.info(("done", "bold green"), f": results in {workdir.results}")
    for name in config.input_names:
        console.info(f"  {workdir.result_dir(name)}")
    console.info(f"report: {workdir.report_index}")
    if config.kind == EVALUATION:
        console.info(f"evaluation: {workdir.evaluation_dir}")
    return 0


def cmd_status(args) -> int:
    from .orchestration.config import RunConfig
    from .orchestration.status import render_status, status_console, status_report, watch
    from .paths import Workdir

    workdir = Workdir(args.workdir)
    config = RunConfig.load(workdir)  # refuses a folder that is not a workdir (and imports no numpy: status is fast)
    if args.watch:
        report = watch(workdir, args.watch, status_console(), config)
    else:
        report = status_report(workdir, config)
        if args.json:
            console.print_stdout(json.dumps(report, indent=1))  # a full or closed stdout: one line, not a traceback
        else:
            status_console().print(render_status(report))
    return 0 if report["complete"] else 1


def cmd_translate(args) -> int:
    from .atomic import atomic_open
    from .errors import InputError
    from .fasta import write_translation

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
    from .errors import InputError
    from .fasta import ESM_LETTERS, NUCLEOTIDE, PROTEIN, read_records
    from .modelstore.demo import is_demo_model
    from .modelstore.resolve import require_here
    from .stages.embedding import resolve_device
    from .storage import write_matrix

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
        from .stages.esm2 import load_engine
        packing = args.packing and os.environ.get("VIRNUCPRO_DISABLE_PACKING", "") in ("", "0")
        engine = load_engine(args.model, device, args.precision, packing, args.token_budget, compile=args.compile,
                             residual=args.esm_residual)
        matrix = engine.embed(seqs)
    else:
        from .engines.dnabert import load_dnabert_engine
        embedder = load_dnabert_engine(args.model, device, precision="fp32" if args.precision == "auto" else args.precision,
                                       remote_code=args.dnabert_remote_code, token_budget=args.token_budget,
                                       allow_download=args.allow_download)
        matrix = embedder.embed(seqs)
    write_matrix(args.out, ids, matrix, attrs={"model": args.model, "kind": args.kind, **({"demo_model": True} if demo else {})})
    console.info(f"wrote {len(ids)} embeddings of dimension {matrix.shape[1]} to {args.out}")
    return 0


def cmd_demo_models(args) -> int:
    from .engines.demo import write_demo_models

    paths = write_demo_models(args.directory)
    console.warn(DEMO_WARNING)
    for kind, path in paths.items():
        console.info(f"  {kind}: {path}")
    return 0


# ---------------------------------------------------------------- parser

# (command, kind of run, summary, epilog): the commands that run a workdir's stages locally
RUN_COMMANDS = (
    ("run", PREDICTION, "run every stage locally (resumes an interrupted run)",
     "examples:\n  virnucpro-slurm run --demo --workdir demo-run\n"
     "  virnucpro-slurm run inputs.txt -w W --classifier 500_model.pth --device cuda\n"
     "  virnucpro-slurm run inputs.txt -w W --models my-models/ --chunk-length 300"),
    ("train", TRAINING, "train a classifier on labelled FASTA files (prepare, embeddings, train)",
     "LABELS: one input per line: FASTA<TAB>virus|other[<TAB>GenBank]; '#' comments; paths "
     "relative to the LABELS file\n\nexamples:\n"
     "  virnucpro-slurm train labels.tsv -w T --models my-models/ --chunk-length 150\n"
     "  virnucpro-slurm train labels.tsv -w T --esm-model esm2_t33_650M_UR50D --device cuda\n"
     "  virnucpro-slurm submit -w T --partition gpu   # the same training on SLURM"),
    ("evaluate", EVALUATION, "measure a classifier on labelled FASTA files (metrics, thresholds, curves)",
     "LABELS: as for train. A workdir that already holds the embeddings of the same inputs "
     "and models (a training's, a prediction's) reuses them\n\nexamples:\n"
     "  virnucpro-slurm evaluate labels.tsv -w E --classifier T/classifier/classifier.safetensors "
     "--models my-models/\n"
     "  virnucpro-slurm evaluate labels.tsv -w E --classifier 300_model.pth --target-fdr 0.01"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="virnucpro-slurm",
        description="VirNucPro viral sequence identification, step-first, on one machine or a SLURM cluster.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  virnucpro-slurm run --demo --workdir demo-run\n"
               "  virnucpro-slurm run inputs.txt --workdir W --classifier 500_model.pth\n"
               "  virnucpro-slurm status --workdir W\n",
    )
    parser.add_argument("--version", action="version", version=f"virnucpro {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name, kind, summary, examples in RUN_COMMANDS:  # one local command per kind of run
        command = sub.add_parser(name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=examples)
        _add_run_options(command, kind)
        _add_common(command)
        command.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="what is done, running and failed, per stage and shard",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="exit status 0 only when every stage is done\n\nexamples:\n"
                                   "  virnucpro-slurm status --workdir W\n"
                                   "  virnucpro-slurm status --workdir W --json | jq .complete")
    status.add_argument("--workdir", "-w", type=Path, required=True, help="the run's workdir")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", nargs="?", type=_watch_seconds, const=5.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 5) until the run is complete or nothing is left running")
    _add_common(status)
    status.set_defaults(func=cmd_status)

    translate = sub.add_parser("translate", help="chunk and six-frame translate one FASTA (the original's _identified_* files)",
                               epilog="example:\n  virnucpro-slurm translate reads.fa --chunk-length 500 "
                                      "--nucleotide-out reads_identified_nucleotide.fa --protein-out reads_identified_protein.faa",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    translate.add_argument("fasta", type=Path, help="nucleotide FASTA (plain or .gz)")
    translate.add_argument("--chunk-length", type=_chunk_length, required=True, metavar="N",
                           help=f"chunk length of the VirNucPro model the files are for ({MIN_CHUNK_LENGTH}..{MAX_CHUNK_LENGTH}; "
                                "the original's are 300 and 500)")
    translate.add_argument("--nucleotide-out", type=Path, required=True, metavar="FA",
                           help="FASTA of the stop-free frames' nucleotides (the original's _identified_nucleotide.fa)")
    translate.add_argument("--protein-out", type=Path, required=True, metavar="FAA",
                           help="FASTA of their proteins (the original's _identified_protein.faa)")
    _add_common(translate)
    translate.set_defaults(func=cmd_translate)

    embed = sub.add_parser("embed", help="embed a FASTA with ESM-2 or DNABERT-S into HDF5",
                           description="Embed one FASTA file with ESM-2 (proteins) or DNABERT-S (nucleotides) into "
                                       "an HDF5 file. 'virnucpro-slurm embed esm2 --help' and 'embed dnabert --help' "
                                       "list each model's options.",
                           epilog="examples:\n"
                                  "  virnucpro-slurm embed esm2 proteins.faa --model esm2_t36_3B_UR50D --out esm.h5\n"
                                  "  virnucpro-slurm embed dnabert reads.fa --model models/DNABERT-S --out dnabert.h5",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = embed.add_subparsers(dest="kind", metavar="MODEL", required=True)
    esm2 = kinds.add_parser("esm2", help="embed proteins with ESM-2 (mean of the last layer over residues)",
                            epilog="examples:\n"
                                   "  virnucpro-slurm embed esm2 proteins.faa --model esm2_t36_3B_UR50D --out esm.h5\n"
                                   "  virnucpro-slurm embed esm2 proteins.faa --model models/esm2_t36_3B_UR50D.pt "
                                   "--out esm.h5 --device cuda --precision bf16",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    esm2.add_argument("fasta", type=Path, help="protein FASTA (stop-free, ESM-2's letters; plain or .gz)")
    esm2.add_argument("--model", required=True, metavar="NAME|PT",
                      help="fair-esm name (e.g. esm2_t36_3B_UR50D, from the torch hub cache) or a local esm2_*.pt "
                           "with its -contact-regression.pt beside it")
    esm2.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                      help="default fp16 on CUDA, fp32 on CPU; fp16/bf16 need CUDA")
    esm2.add_argument("--no-packing", dest="packing", action="store_false",
                      help="use fair-esm's padded forward instead of the packed engine (also VIRNUCPRO_DISABLE_PACKING=1)")
    esm2.add_argument("--token-budget", type=_positive_int, metavar="N",
                      help="tokens per packed batch (default: sized from free GPU memory)")
    _add_esm_engine_options(esm2)
    esm2.set_defaults(dnabert_remote_code=False)
    dnabert = kinds.add_parser("dnabert", help="embed nucleotides with DNABERT-S (mean of the last hidden state)",
                               epilog="examples:\n"
                                      "  virnucpro-slurm embed dnabert reads.fa --model models/DNABERT-S --out dnabert.h5\n"
                                      "  virnucpro-slurm embed dnabert reads.fa --model zhihan1996/DNABERT-S --out dnabert.h5 "
                                      "--device cuda",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    dnabert.add_argument("fasta", type=Path, help="nucleotide FASTA (IUPAC letters; plain or .gz)")
    dnabert.add_argument("--model", required=True, metavar="ID|DIR",
                         help="Hugging Face id (e.g. zhihan1996/DNABERT-S, from the local HF cache) or a model folder")
    dnabert.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                         help="default fp32 (the original's numbers); fp16/bf16 need CUDA")
    dnabert.add_argument("--token-budget", type=_positive_int, metavar="N", help="padded tokens per batch")
    dnabert.add_argument("--dnabert-remote-code", action="store_true",
                         help="run the model folder's own code (trust_remote_code) instead of the native engine")
    dnabert.set_defaults(packing=True, compile=None, esm_residual="fp32")
    for kind in (esm2, dnabert):
        kind.add_argument("--out", type=Path, required=True, metavar="H5",
                          help="HDF5 file to write, with datasets ids and embeddings")
        kind.add_argument("--device", default="auto", type=_device, help="auto, cpu, cuda or cuda:N (default auto)")
        kind.add_argument("--allow-download", action="store_true", help="fetch a hub model this machine has not cached")
        _add_common(kind)
        kind.set_defaults(func=cmd_embed)

    demo = sub.add_parser("demo-models", help="write tiny random models in the real on-disk formats (meaningless predictions)",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="example:\n  virnucpro-slurm demo-models my-demo-models\n"
                                 "  virnucpro-slurm run virnucpro/data/example/inputs.txt -w W --models my-demo-models")
    demo.add_argument("directory", type=Path, help="folder to write the demo models into")
    _add_common(demo)
    demo.set_defaults(func=cmd_demo_models)

    for module in COMMAND_MODULES:  # commands that live beside their subsystem
        importlib.import_module(module).register(sub, _add_common, _add_run_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    console.configure(quiet=args.quiet, verbose=args.verbose)
    try:
        return args.func(args)
    except RunInterrupted as exc:
        console.interrupted(str(exc))
        return exc.exit_code
    except VirnucproError as exc:
        console.error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C outside a shard (the run's finished work is kept too)
        console.interrupted("run the same command again to resume")
        return RunInterrupted.exit_code if args.command == "run" else 130
    except Exception as exc:  # never a traceback for users unless asked
        console.log_traceback()
        if args.debug:
            raise
        where = f"; traceback in {console.log_file()}" if console.log_file() else "; re-run with --debug for the traceback"
        console.error(f"internal error: {type(exc).__name__}: {exc}{where}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
