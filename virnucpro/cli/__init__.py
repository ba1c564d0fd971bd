"""`virnucpro-slurm`: run VirNucPro step-first, locally or as SLURM array jobs.

The parser is declared in cli/parser.py; each family of commands has its module, imported only
when one of its commands runs: run.py (run, train, evaluate), cluster.py (submit, status,
cancel), models.py (models download/verify), report.py (report), tools.py (translate, embed,
demo-models).
"""

from __future__ import annotations

from .. import console
from ..errors import RunInterrupted, VirnucproError
from .parser import build_parser

__all__ = ["build_parser", "main"]


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

