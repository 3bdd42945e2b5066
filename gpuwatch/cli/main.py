"""The `gpuwatch` command line: one subcommand per module beside this one in `gpuwatch/cli/`.

Exit codes: 0 success, 1 runtime failure (corrupt trace, unreadable run, target gone), 2 usage or
configuration error (bad flag, missing path), 130 interrupted. Errors are one line on stderr; stdout
carries only data, so `--json` output stays parseable.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from gpuwatch.cli.arguments import add_command
from gpuwatch.errors import EXIT_RUNTIME, EXIT_USAGE, GpuwatchError

COMMANDS: dict[str, str] = {
    "import": "gpuwatch.cli.import_cmd",
    "summary": "gpuwatch.cli.summary_cmd",
    "attach": "gpuwatch.cli.attach_cmd",
    "compare": "gpuwatch.cli.compare_cmd",
    "top": "gpuwatch.cli.top_cmd",
    "report": "gpuwatch.cli.report_cmd",
    "run": "gpuwatch.cli.run_cmd",
    "consolidate": "gpuwatch.cli.consolidate_cmd",
    "sql": "gpuwatch.cli.sql_cmd",
    "export": "gpuwatch.cli.export_cmd",
}
"""Subcommand name -> module with `TEXT` (its `CommandText`, mostly from the module docstring: the help line
first, then the description), `add_arguments(parser)` and `run(args) -> int`."""

EPILOG = """\
exit codes: 0 success, 1 runtime failure, 2 usage or configuration error, 130 interrupted.
Errors print one line on stderr; set GPUWATCH_DEBUG=1 to get a traceback instead.

Typical use:
  gpuwatch import trace_rank*.json.gz --out runs/exp1    # PyTorch profiler traces -> run
  gpuwatch summary runs/exp1                             # where each step's time went, what to change
  gpuwatch report runs/exp1 -o report.html               # the same as one offline HTML file to share
  gpuwatch attach 12345 --duration 30 --out runs/live    # a running trainer, no code change
  gpuwatch top runs/exp1                                 # live dashboard of a run being written
  gpuwatch run -- python train.py                        # watch a job in-process, no code change
  gpuwatch compare base.json runs/exp1 --junit out.xml   # CI gate: fail on an efficiency regression
  in Python: with gpuwatch.watch("runs/exp1") as gw: ... gw.step()   # around your training loop
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (plus the exit code 2)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


FAST_EXIT = frozenset({"import", "summary"})
"""Commands that leave through `os._exit` once their output is flushed (`console_main`): they wait for
everything they start, and freeing an import's columns and modules took 40-55 ms of the process's life
(timed from the end of `main` to the exit, 216k-event trace)."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `only` (a command name) that command's arguments alone: a command does not
    import the others' modules to run (`compare`'s defaults import its budget records, ~30 ms)."""
    from gpuwatch import __version__

    parser = _Parser(
        prog="gpuwatch",
        description="Why do my GPUs sit idle during training, and what do I change? gpuwatch splits every "
        "training step on every rank into compute and each cause of idleness (data loading, CPU "
        "preprocessing, sync, checkpoint I/O, memcpy, host overhead, unattributed) and names the fix.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gpuwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            continue
        command = importlib.import_module(module)
        command.add_arguments(add_command(sub, name, command.TEXT))
    return parser


def command_of(argv: list[str]) -> str | None:
    """The command `argv` names, if its first word is one (the top level takes no option but --help and
    --version, so a command is always first)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=command_of(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    run = importlib.import_module(COMMANDS[args.command]).run
    try:
        return int(run(args) or 0)
    except GpuwatchError as exc:
        if os.environ.get("GPUWATCH_DEBUG"):
            raise
        print(f"gpuwatch {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"gpuwatch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gpuwatch summary --json | head`
        return 0
    except Exception as exc:  # a bug of ours: still one line, with the way to get the traceback
        if os.environ.get("GPUWATCH_DEBUG"):
            raise
        print(
            f"gpuwatch {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(rerun with GPUWATCH_DEBUG=1 for a traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_RUNTIME


def console_main() -> None:
    """The `gpuwatch` script: `main`, then the exit; `FAST_EXIT` commands skip the interpreter's teardown."""
    argv = sys.argv[1:]
    code = main(argv)
    if command_of(argv) in FAST_EXIT:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (BrokenPipeError, ValueError, OSError):  # `| head` closed it: nothing left to say
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
