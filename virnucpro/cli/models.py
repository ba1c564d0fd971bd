"""`models download DIR` and `models verify DIR` (the model store: modelstore/)."""

from __future__ import annotations

from .. import console
from ..errors import VirnucproError
from ..modelstore.download import DEADLINE_S, download
from ..modelstore.manifest import download_command, manifest_path, size_text, verify
from ..modelstore.sources import DNABERT_REVISION, mirror_jobs, original_jobs


def cmd_download(args) -> int:
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
    problems, ok = verify(args.directory)
    for line in problems:
        console.error(line)
    if problems:
        console.error(f"{len(problems)} file(s) of {args.directory} do not match its manifest; download them again "
                      f"('{download_command(args.directory)}')")
        return 1
    console.info(("ok", "green"), f": {len(ok)} file(s) of {args.directory} match its manifest")
    return 0
