"""`virnucpro-slurm report`: (re)write W/report/index.html, its figures and W/provenance.json."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .. import console
from ..errors import OutputError


def cmd_report(args) -> int:
    from ..atomic import refuse_linked_folders
    from ..orchestration.plan import open_run
    from . import write_report

    workdir, config, _ = open_run(args.workdir)
    refuse_linked_folders(workdir.root)  # before the log file: nothing written through a link
    check_writable(workdir.root, [workdir.run_log().parent, workdir.report_dir, workdir.root])
    console.log_to_file(workdir.run_log())
    index = write_report(workdir, config)
    console.info(f"report: {index}")
    console.info(f"provenance: {workdir.provenance}")
    return 0


def check_writable(workdir: Path, folders: list[Path]) -> None:
    """Refuse, before anything is drawn, a workdir the report cannot be written into (read-only
    mount, no permission, a file where a folder should be): one line naming the folder."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):  # unnamed where the OS allows it: nothing left behind
                pass
        except OSError as exc:
            raise OutputError(exc.errno, f"{folder}: cannot write the report there ({exc.strerror or exc}); make "
                                         f"the workdir writable (chmod -R u+w {workdir}) or copy it somewhere "
                                         "writable and run report on the copy") from None


def register(subparsers, add_common, add_run_options) -> None:
    report = subparsers.add_parser(
        "report", help="write an HTML report (W/report/index.html) and W/provenance.json for a run",
        description="Summarise a run, finished or not: virus scores per frame and per read, read calls, "
                    "chunks and frames per read, frames lost to stop codons, and per stage wall time, "
                    "throughput, requeues and failures; of a training run: loss per epoch, held-out metrics, "
                    "frames per class and input, the recipe. The page is self-contained and opens offline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  virnucpro-slurm report --workdir W\n  xdg-open W/report/index.html")
    report.add_argument("--workdir", "-w", type=Path, required=True, help="the run's workdir")
    add_common(report)
    report.set_defaults(func=cmd_report)
