"""`virnucpro-slurm models download DIR` and `models verify DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import console

EPILOG = """\
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

ONLY_CHOICES = ("esm2", "dnabert", "classifiers")


def _only(text: str) -> set[str]:
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    unknown = kinds - set(ONLY_CHOICES)
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"--only takes a comma-separated list of {', '.join(ONLY_CHOICES)}; "
                                         f"got {text!r}")
    return kinds


def register(subparsers, add_common, add_run_options) -> None:
    from ..cli import positive_seconds

    models = subparsers.add_parser("models", help="download the real models for a cluster (login node), verify them",
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    verbs = models.add_subparsers(dest="models_command", metavar="download|verify")
    download = verbs.add_parser("download", help="fetch ESM-2 3B, DNABERT-S and the classifiers into DIR (resumable)",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    download.add_argument("directory", type=Path, metavar="DIR", help="folder to download the models into (created if missing)")
    download.add_argument("--only", type=_only, metavar="KINDS", help="comma-separated subset of esm2,dnabert,classifiers")
    download.add_argument("--mirror", metavar="URL", help="fetch from a site mirror (a served models folder) instead")
    download.add_argument("--dnabert-revision", default=None, metavar="REV",
                          help="DNABERT-S hub revision (default main; the manifest records the commit it resolved to)")
    download.add_argument("--jobs", type=int, default=4, metavar="N", help="files fetched at once (default 4)")
    download.add_argument("--file-deadline", type=positive_seconds, default=None, metavar="SECONDS",
                          help="abandon a file not complete after SECONDS, all retries together (default 12 hours); "
                               "what arrived is kept and the next run resumes it")
    add_common(download)
    download.set_defaults(func=cmd_download)
    verify = verbs.add_parser("verify", help="re-hash DIR's files against its manifest (exit 0 only if all match)")
    verify.add_argument("directory", type=Path, metavar="DIR", help="a models folder with its virnucpro-models.json manifest")
    add_common(verify)
    verify.set_defaults(func=cmd_verify)
    models.set_defaults(func=lambda args: (models.print_help(), 2)[1], quiet=False, verbose=False, debug=False)


def cmd_download(args) -> int:
    from ..errors import VirnucproError
    from .download import DEADLINE_S, download
    from .manifest import manifest_path, size_text
    from .sources import DNABERT_REVISION, mirror_jobs, original_jobs

    if args.jobs < 1:
        raise VirnucproError(f"--jobs {args.jobs}: give at least 1")
    if args.mirror:
        if args.dnabert_revision:
            raise VirnucproError("--dnabert-revision applies to the hub, not to --mirror (the mirror's manifest "
                                 "fixes every file)")
        jobs = mirror_jobs(args.mirror, args.only)
    else:
        jobs = original_jobs(args.only, args.dnabert_revision or DNABERT_REVISION)
    known = sum(j.size or 0 for j in jobs)
    console.info(f"{len(jobs)} file(s){f' ({size_text(known)} listed)' if known else ''} into {args.directory}")
    entries, errors = download(args.directory, jobs, workers=args.jobs, deadline_s=args.file_deadline or DEADLINE_S,
                               mirror=args.mirror)
    if errors:
        console.error(f"{len(errors)} of {len(jobs)} file(s) failed (see above); run the same command again to "
                      "resume; nothing partial is under a final name")
        return 1
    console.info(("done", "green"), f": {len(entries)} file(s), {size_text(sum(e.size for e in entries))}; "
                 f"manifest {manifest_path(args.directory)}")
    console.info(f"use it with: --models {args.directory}")
    return 0


def cmd_verify(args) -> int:
    from .manifest import download_command, verify

    problems, ok = verify(args.directory)
    for line in problems:
        console.error(line)
    if problems:
        console.error(f"{len(problems)} file(s) of {args.directory} do not match its manifest; download them again "
                      f"('{download_command(args.directory)}')")
        return 1
    console.info(("ok", "green"), f": {len(ok)} file(s) of {args.directory} match its manifest")
    return 0
