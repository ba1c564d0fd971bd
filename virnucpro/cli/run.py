"""`run`, `train` and `evaluate`: a workdir's stages on this machine; and the run request that
`submit` plans too."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import console
from ..errors import VirnucproError
from ..modelstore.resolve import check_for_run
from ..orchestration.plan import RunRequest, plan_run
from ..orchestration.runner import StageContext, StopFlag, run_locally
from ..orchestration.slurm import active_jobs
from ..orchestration.writer import WorkdirWriter
from ..pipeline import EVALUATION, PREDICTION, TRAINING

EXAMPLE_DIR = Path(__file__).parents[1] / "data" / "example"
DEMO_WARNING = ("DEMO MODELS: random weights; their predictions are MEANINGLESS. "
                "Use the real VirNucPro classifier, ESM-2 3B and DNABERT-S for real calls.")


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
    """Demo models, whatever flag brought them in (modelstore.resolve.resolve_models decides)."""
    if config.models.demo:
        console.warn(DEMO_WARNING)


def run_request(args: argparse.Namespace) -> RunRequest:
    here = args.command != "submit"
    check_device(args.device, here, precision=args.precision, dnabert_precision=args.dnabert_precision)

    inputs = args.inputs
    models_dir = args.models
    workdir = args.workdir or Path("virnucpro-run")
    demo = getattr(args, "demo", False)
    if inputs is None and not demo and not here and Path(workdir, "run.json").exists():
        return RunRequest.of_run(workdir)  # submit --workdir W: the run W holds, of whatever kind
    if demo:
        from ..engines.demo import write_demo_models  # torch: only with --demo (submit runs on login nodes)

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
        seed=getattr(args, "seed", 42), holdout_window=getattr(args, "holdout_window", 0),
        target_fdr=getattr(args, "target_fdr", 0.05),
        calibration=getattr(args, "calibration", None), virus_share=getattr(args, "virus_share", None),
        max_fdr=getattr(args, "max_fdr", None),
    )


def run_kind(args: argparse.Namespace) -> str:
    """The kind of run a command line asks for: its command's (train, evaluate), or submit's --kind."""
    return args.command if args.command in (TRAINING, EVALUATION) else getattr(args, "kind", PREDICTION)


def cmd_run(args) -> int:
    stop = StopFlag().install()  # before anything is written: a SIGTERM now still ends cleanly
    request = run_request(args)
    check_for_run(request)
    # held until the run ends; status names the holder by its command (run, train, evaluate)
    with WorkdirWriter(request.workdir, f"virnucpro-slurm {args.command}") as writer:
        workdir, config, state = plan_run(request, writer, active_jobs)
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
        console.info(f"evaluations compared: {workdir.evaluations_page}")
    return 0
