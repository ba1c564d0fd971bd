"""The command line, declared in one place: every command, its options and their parse-time checks.

Each command names its function as (family, function); the family's module (cli/run.py,
cli/cluster.py, cli/models.py, cli/report.py, cli/tools.py) is imported only when that command
runs, so `--help` and `status` stay fast and import no torch.
"""

from __future__ import annotations

import argparse
import importlib
import math
from pathlib import Path

from .. import __version__
from ..model_facts import DEFAULT_CHUNK_LENGTH, MAX_CHUNK_LENGTH, MIN_CHUNK_LENGTH, parse_chunk_length, seed_problem
from ..orchestration.container import RUNTIMES
from ..pipeline import EVALUATION, KINDS, PREDICTION, STAGES, TRAINING


class Command:
    """A command's function by name: calling it imports its family's module, then runs it."""

    def __init__(self, family: str, function: str):
        self.family, self.function = family, function

    def __call__(self, args: argparse.Namespace) -> int:
        module = importlib.import_module(f"{__package__}.{self.family}")
        return getattr(module, self.function)(args)


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
    group.add_argument("--force-chunk-length", action="store_true",
                       help="allow a chunk length that contradicts a released classifier's file name (300_/500_model.pth); "
                            "a trained classifier's chunk length is part of it and is never overridden")


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
        training.add_argument("--holdout-window", type=_whole_number, default=0, metavar="BASES",
                              help="split records into windows of this many bases for the held-out split (few genomes); "
                                   "default 0: whole records")
        training.add_argument("--seed", type=_seed, default=42,
                              help="seed of the split and the shuffles (0 to 2^64-1; default 42)")
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
    calls = parser.add_argument_group("read calls (changing any of them re-runs consensus only)")
    rule = calls.add_mutually_exclusive_group()
    rule.add_argument("--min-score", type=_score, metavar="T",
                      help="call a read virus iff its max_virus_score >= T (0..1); default: virus iff at least one "
                           "chunk is viral by the original per-chunk rule")
    rule.add_argument("--max-fdr", type=_fdr, metavar="Q",
                      help="call virus exactly the reads whose fdr (reads.tsv) is at most Q (0 < Q <= 1); needs a "
                           "calibration")
    calls.add_argument("--calibration", metavar="FILE",
                       help="calibration of the read scores (evaluate's calibration.json): reads.tsv gains "
                            "virus_probability and fdr at each input's own virus share; default: the classifier's own "
                            "when it carries one (train fits one)")
    calls.add_argument("--virus-share", type=_fraction, metavar="P",
                       help="each input's virus share, 0 < P < 1, instead of estimating it from the input's reads")
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


def _number_option(convert, accept, what: str):
    """An option's type: `text` converted (int or float) and accepted by `accept`, else refused at
    parse time in one line saying what it must be (nan fails every comparison: refused too)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            return _refuse(text, what)
        return value if accept(value) else _refuse(text, what)
    return parse


def _refuse(text: str, what: str):
    raise argparse.ArgumentTypeError(f"{text!r} is not {what}")


# counts (shards, tokens)
_positive_int = _number_option(int, lambda v: v >= 1, "a whole number of at least 1")
_whole_number = _number_option(int, lambda v: v >= 0, "a whole number of at least 0")
# a duration: finite and > 0 (-1, nan and inf refused)
positive_seconds = _number_option(float, lambda v: math.isfinite(v) and v > 0, "a positive number of seconds")
_fraction = _number_option(float, lambda v: 0.0 < v < 1.0, "a fraction between 0 and 1 (both excluded)")
_score = _number_option(float, lambda v: 0.0 <= v <= 1.0, "a score between 0 and 1")
_fdr = _number_option(float, lambda v: 0.0 < v <= 1.0, "a false-discovery rate: above 0, at most 1")


WATCH_MIN_SECONDS = 0.5  # a redraw folds every state record: faster would be a busy loop on a big run


def _watch_seconds(text: str) -> float:
    """--watch SECONDS; tiny values are raised to the minimum."""
    return max(positive_seconds(text), WATCH_MIN_SECONDS)


def _chunk_length(text: str) -> int:
    try:
        return parse_chunk_length(text)  # the same check as a classifier description's chunk_length
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seed(text: str) -> int:
    """--seed: 0 to 2**64 - 1 (-1 or 2**64 would pass int() and fail deep in the training)."""
    try:
        value = int(text)
    except ValueError:
        value = text
    problem = seed_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _device(text: str) -> str:
    """auto, cpu, cuda or cuda:N; anything else (tpu, mps, cuda:x) is refused at parse time."""
    head, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (head == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda or cuda:N")


ONLY_CHOICES = ("esm2", "dnabert", "classifiers")


def _only(text: str) -> set[str]:
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    unknown = kinds - set(ONLY_CHOICES)
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"--only takes a comma-separated list of {', '.join(ONLY_CHOICES)}; "
                                         f"got {text!r}")
    return kinds


# ---------------------------------------------------------------- commands

# (command, kind of run, summary, epilog): the commands that run a workdir's stages locally
RUN_COMMANDS = (
    ("run", PREDICTION, "run every stage locally (resumes an interrupted run)",
     "examples:\n  virnucpro-slurm run --demo --workdir demo-run\n"
     "  virnucpro-slurm run inputs.txt -w W --classifier 500_model.pth --device cuda\n"
     "  virnucpro-slurm run inputs.txt -w W --models my-models/ --chunk-length 300"),
    ("train", TRAINING, "train a classifier on labelled FASTA files (prepare, embeddings, train)",
     "LABELS: one input per line: FASTA<TAB>virus|other[<TAB>GenBank]; '#' comments; paths "
     "relative to the LABELS file\n\n"
     "The recipe is the original VirNucPro train.py's and is fixed (no options: a classifier is comparable "
     "with the released ones); only --holdout, --holdout-window and --seed choose the split. Its loss does not "
     "weight the classes, so unbalanced classes (GenBank mode often keeps 10x more frames of one) bias the "
     "calls toward the larger: balance the LABELS file (subsample the larger class, or add sequences of the "
     "smaller), and choose --min-score with 'evaluate' on a labelled set like your data.\n\nexamples:\n"
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


SUBMIT_EPILOG = """\
examples:
  virnucpro-slurm submit inputs.txt -w W --partition gpu --classifier 500_model.pth
  virnucpro-slurm submit inputs.txt -w W --profile slurm_templates/example-site.yaml --dry-run
  virnucpro-slurm submit inputs.txt -w W --partition gpu --gpus-per-task 4 --max-parallel-gpus 16 --time-esm2 12:00:00
  virnucpro-slurm submit inputs.txt -w W --partition gpu --container virnucpro.sif   # every task in the image
  virnucpro-slurm status -w W --watch
  virnucpro-slurm cancel -w W

The job graph: prepare (CPU) -> dnabert and esm2 (GPU arrays over shards) -> predict (array)
-> consensus. Submitting again on the same workdir submits only the unfinished (stage, shard)
pairs. Settings come from built-in defaults < --profile < flags. Shards: --shards N, default
one per 50 Mbp of input (about 4 min of ESM-2 3B per shard on one H100), so each GPU task
amortises its model loading; a task with --gpus-per-task N takes N shards, one per GPU.
"""

MODELS_EPILOG = """\
examples (on the login node, which has internet; compute nodes need none afterwards):
  virnucpro-slurm models download /shared/virnucpro-models
  virnucpro-slurm models verify /shared/virnucpro-models
  virnucpro-slurm submit inputs.txt -w W --partition gpu --models /shared/virnucpro-models
  virnucpro-slurm models download DIR --mirror https://models.example.org/virnucpro   # a site mirror
  virnucpro-slurm models download DIR --only classifiers

DIR gets esm2_t36_3B_UR50D.pt and its -contact-regression.pt (fair-esm, ~5.7 GB), DNABERT-S/ (the
zhihan1996/DNABERT-S hub files at one commit), 300_model.pth and 500_model.pth (VirNucPro), and
virnucpro-models.json, the manifest (size, SHA-256, origin URL, revision, time of every file).
Interrupted downloads resume (HTTP Range) when the same command runs again. A mirror is a models
folder (made by 'models download' or 'demo-models') served over HTTP(S).
"""


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
        command.set_defaults(func=Command("run", "cmd_run"))

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
    status.set_defaults(func=Command("cluster", "cmd_status"))

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
    translate.set_defaults(func=Command("tools", "cmd_translate"))

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
        kind.set_defaults(func=Command("tools", "cmd_embed"))

    demo = sub.add_parser("demo-models", help="write tiny random models in the real on-disk formats (meaningless predictions)",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="example:\n  virnucpro-slurm demo-models my-demo-models\n"
                                 "  virnucpro-slurm run virnucpro/data/example/inputs.txt -w W --models my-demo-models")
    demo.add_argument("directory", type=Path, help="folder to write the demo models into")
    _add_common(demo)
    demo.set_defaults(func=Command("tools", "cmd_demo_models"))

    _add_submit_and_cancel(sub)  # the SLURM commands, then report and models, as --help lists them
    _add_report(sub)
    _add_models(sub)
    return parser


def _add_submit_and_cancel(sub) -> None:
    submit = sub.add_parser("submit", help="run every stage as SLURM array jobs (resubmit: only unfinished work)",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SUBMIT_EPILOG)
    _add_run_options(submit, "any")
    slurm = submit.add_argument_group("SLURM (flags override the --profile, which overrides the defaults)")
    slurm.add_argument("--profile", metavar="YAML|NAME", help="site profile, e.g. slurm_templates/example-site.yaml")
    slurm.add_argument("--partition", help="partition of the GPU stages (dnabert, esm2)")
    slurm.add_argument("--cpu-partition", help="partition of the stages that need no GPU: prepare, predict, consensus, "
                                               "evaluate, and every stage with --device cpu (default: --partition)")
    slurm.add_argument("--account", help="account to charge the jobs to (sbatch --account)")
    slurm.add_argument("--qos", help="quality of service of the jobs (sbatch --qos)")
    slurm.add_argument("--gres-name", help="GPU gres as in --gres=NAME:N (default gpu; e.g. gpu:a100)")
    slurm.add_argument("--gpus-per-task", type=int, metavar="N",
                       help="GPUs per dnabert/esm2 task (one worker per GPU, up to N shards per task; default 1)")
    slurm.add_argument("--max-parallel-gpus", type=int, metavar="N",
                       help="at most N GPUs held by the run at once (the two GPU arrays then run one after the other)")
    for stage in STAGES:
        slurm.add_argument(f"--time-{stage}", metavar="TIME", help=f"time limit of {stage} tasks (minutes or H:MM:SS)")
    slurm.add_argument("--container", metavar="IMAGE",
                       help="run every task inside this image (container/build.sh: a .sif file or a Charliecloud folder), "
                            "with the workdir, models and inputs bound at the same paths")
    slurm.add_argument("--container-runtime", choices=tuple(RUNTIMES),
                       help="what runs --container (default: the first of these on PATH here)")
    slurm.add_argument("--dry-run", action="store_true",
                       help="write and print the sbatch scripts under W/slurm/dry-run/; submit nothing, change no state")
    _add_common(submit)
    submit.set_defaults(func=Command("cluster", "cmd_submit"))

    cancel = sub.add_parser("cancel", help="cancel every SLURM job of a workdir (resubmit to resume)",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="cancels the jobs recorded in W/slurm/jobs.json; tasks stopped by it do not "
                                   "requeue themselves\n\nexamples:\n  virnucpro-slurm cancel --workdir W\n"
                                   "  virnucpro-slurm submit inputs.txt --workdir W --partition gpu   # resume later")
    cancel.add_argument("--workdir", "-w", type=Path, required=True, help="the run's workdir")
    _add_common(cancel)
    cancel.set_defaults(func=Command("cluster", "cmd_cancel"))


def _add_report(sub) -> None:
    report = sub.add_parser(
        "report", help="write an HTML report (W/report/index.html) and W/provenance.json for a run",
        description="Summarise a run, finished or not: virus scores per frame and per read, read calls, "
                    "chunks and frames per read, frames lost to stop codons, and per stage wall time, "
                    "throughput, requeues and failures; of a training run: loss per epoch, held-out metrics, "
                    "frames per class and input, the recipe. The page is self-contained and opens offline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  virnucpro-slurm report --workdir W\n  xdg-open W/report/index.html")
    report.add_argument("--workdir", "-w", type=Path, required=True, help="the run's workdir")
    _add_common(report)
    report.set_defaults(func=Command("report", "cmd_report"))


def _add_models(sub) -> None:
    models = sub.add_parser("models", help="download the real models for a cluster (login node), verify them",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=MODELS_EPILOG)
    verbs = models.add_subparsers(dest="models_command", metavar="download|verify")
    download = verbs.add_parser("download", help="fetch ESM-2 3B, DNABERT-S and the classifiers into DIR (resumable)",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=MODELS_EPILOG)
    download.add_argument("directory", type=Path, metavar="DIR", help="folder to download the models into (created if missing)")
    download.add_argument("--only", type=_only, metavar="KINDS", help="comma-separated subset of esm2,dnabert,classifiers")
    download.add_argument("--mirror", metavar="URL", help="fetch from a site mirror (a served models folder) instead")
    download.add_argument("--dnabert-revision", default=None, metavar="REV",
                          help="DNABERT-S hub revision (default main; the manifest records the commit it resolved to)")
    download.add_argument("--jobs", type=int, default=4, metavar="N", help="files fetched at once (default 4)")
    download.add_argument("--file-deadline", type=positive_seconds, default=None, metavar="SECONDS",
                          help="abandon a file not complete after SECONDS, all retries together (default 12 hours); "
                               "what arrived is kept and the next run resumes it")
    _add_common(download)
    download.set_defaults(func=Command("models", "cmd_download"))
    verify = verbs.add_parser("verify", help="re-hash DIR's files against its manifest (exit 0 only if all match)")
    verify.add_argument("directory", type=Path, metavar="DIR", help="a models folder with its virnucpro-models.json manifest")
    _add_common(verify)
    verify.set_defaults(func=Command("models", "cmd_verify"))
    models.set_defaults(func=lambda args: (models.print_help(), 2)[1], quiet=False, verbose=False, debug=False)
