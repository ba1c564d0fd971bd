"""`virnucpro-slurm report`: (re)write W/report/index.html, its figures and W/provenance.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import console


def cmd_report(args) -> int:
    from ..orchestration.plan import open_run
    from . import write_report

    workdir, config, _ = open_run(args.workdir)
    console.log_to_file(workdir.run_log())
    index = write_report(workdir, config)
    console.info(f"report: {index}")
    console.info(f"provenance: {workdir.provenance}")
    return 0


def register(subparsers, add_common, add_run_options) -> None:
    report = subparsers.add_parser(
        "report", help="write an HTML report (W/report/index.html) and W/provenance.json for a run",
        description="Summarise a run, finished or not: virus scores per frame and per read, read calls, "
                    "chunks and frames per read, frames lost to stop codons, and per stage wall time, "
                    "throughput, requeues and failures. The page is self-contained and opens offline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  virnucpro-slurm report --workdir W\n  xdg-open W/report/index.html")
    report.add_argument("--workdir", "-w", type=Path, required=True, help="the run's workdir")
    add_common(report)
    report.set_defaults(func=cmd_report)
