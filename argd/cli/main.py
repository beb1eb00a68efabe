"""The `argd` entry point: parses the command line, dispatches, and turns every failure into one line.

Command modules register their sub-commands here and import their heavy dependencies (torch, the
server stack) only when run, so `argd status` answers in a blink.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from argd import __version__
from argd.cli import cleanse, client_cmds, demo, serve
from argd.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_SERVER,
    EXIT_USAGE,
    ArgumentParser,
    CliError,
)

_GLOBAL_FLAGS = {"--debug"}


def build_parser() -> ArgumentParser:
    """The whole command tree; exposed so tests and docs can walk it."""
    parser = ArgumentParser(
        prog="argd",
        description="Remove backdoors from image classifiers with Attention Relation Graph Distillation.",
    )
    parser.add_argument("--version", action="version", version=f"argd {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="print the full traceback of unexpected errors (or ARGD_DEBUG=1)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cleanse.register(commands)
    serve.register(commands)
    client_cmds.register(commands)
    demo.register(commands)
    commands.add_parser(
        "bench",
        help="benchmarks: 'argd bench defense' and 'argd bench speed' (see 'argd bench --help')",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return the process exit code (see argd.cli.common); never raises SystemExit."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in _leading_flags(args_list) or os.environ.get("ARGD_DEBUG", "") not in ("", "0")
    bench_args = _bench_arguments(args_list)
    try:
        if bench_args is not None:
            return _run_bench(bench_args)
        try:
            args = build_parser().parse_args(args_list)
        except SystemExit as exc:  # --help, --version, usage errors: argparse has printed already
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        code = args.func(args)
        return int(code or 0)
    except KeyboardInterrupt:
        print("argd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `argd jobs | head`: the reader left; that is not an error of ours.
        _silence_stdout()
        return 0
    except Exception as exc:
        code, message = describe_error(exc)
        if debug and code == EXIT_FAILURE:
            traceback.print_exc()
        print(f"argd: error: {message}", file=sys.stderr)
        return code


def describe_error(exc: BaseException) -> tuple[int, str]:
    """Map an exception to (exit code, one-line message); unknown ones are internal errors."""
    from argd.client import ArgdClientError, JobTimeout
    from argd.core.errors import ArgdError, InvalidInput

    if isinstance(exc, CliError):
        return exc.exit_code, exc.message
    if isinstance(exc, InvalidInput):
        return EXIT_USAGE, _one_line(exc.message)
    if isinstance(exc, ArgdError):
        return EXIT_FAILURE, f"{exc.code}: {_one_line(exc.message)}"
    if isinstance(exc, JobTimeout):
        return EXIT_FAILURE, _one_line(str(exc))
    if isinstance(exc, ArgdClientError):
        return EXIT_SERVER, _one_line(str(exc))
    if _missing_table(exc):
        return EXIT_USAGE, "the database has no argd schema (or an old one): run `argd migrate`"
    if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
        name = exc.filename if getattr(exc, "filename", None) else ""
        text = f"{exc.strerror}: {name}" if exc.strerror and name else str(exc)
        return EXIT_USAGE, _one_line(text)
    return EXIT_FAILURE, f"internal error: {type(exc).__name__}: {_one_line(str(exc))} (rerun with --debug)"


def _missing_table(exc: BaseException) -> bool:
    """A query that met a missing table (SQLite "no such table", Postgres UndefinedTable): the schema was
    never made or is behind, which the operator fixes with `argd migrate`, not an internal error."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    if not isinstance(exc, OperationalError | ProgrammingError):
        return False
    text = str(exc.orig)
    return "no such table" in text or getattr(exc.orig, "sqlstate", None) == "42P01"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _leading_flags(args: list[str]) -> list[str]:
    """Global flags given before the command name."""
    flags = []
    for token in args:
        if not token.startswith("-"):
            break
        flags.append(token)
    return flags


def _bench_arguments(args: list[str]) -> list[str] | None:
    """`argd [--debug] bench ...` goes to the benchmark's own parser untouched."""
    for index, token in enumerate(args):
        if token in _GLOBAL_FLAGS:
            continue
        return args[index + 1 :] if token == "bench" else None
    return None


def _run_bench(args: list[str]) -> int:
    # Imported here, not at the top: the benchmarks (argd.bench) load torch and the server stack.
    from argd.bench.cli import main as bench_main

    try:
        return int(bench_main(args) or 0)
    except SystemExit as exc:  # its argparse: --help or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def run() -> None:
    """`python -m argd.cli.main`: exit with main()'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
