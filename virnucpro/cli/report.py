"""`report`: (re)write W/report/index.html, its figures and W/provenance.json."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .. import console
from ..atomic import refuse_linked_folders
from ..errors import OutputError
from ..orchestration.plan import open_run
from ..report import write_report


def cmd_report(args) -> int:
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
