"""What every `argd` command shares: exit codes, the one-line error, small parsing and output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

# The argparse types live in argd.cli.argtypes; these two are named here too for the commands that take them
# from this module.
from argd.core.params import CleanseParams

# Exit codes (documented in the README): scripts branch on them.
EXIT_OK = 0
EXIT_FAILURE = 1  # the work ran and failed: a job failed or was canceled, an internal error
EXIT_USAGE = 2  # bad input: options, files, model or data the engine refuses
EXIT_SERVER = 3  # the server answered an HTTP error or could not be reached
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure the command explains in one line; `exit_code` says which kind."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`argd cleanse: error: ... (see --help)`) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def read_json_file(path: Path, what: str) -> Any:
    """Read a user's JSON file with an error that names the file and the line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"{what}: no such file: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"{what}: {path} is not valid JSON: {exc}") from None


def json_object_file(path: Path | None, flag: str, holds: str = "a JSON object") -> dict[str, Any]:
    """The JSON object in the file a flag such as --spec names ({} when none was given); a CliError
    naming the flag and the file when it holds anything else."""
    if not path:
        return {}
    loaded = read_json_file(path, flag)
    if not isinstance(loaded, dict):
        raise CliError(f"{flag}: {path} must hold {holds}")
    return loaded


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags the user set: argparse leaves the others None, and they must not override a file."""
    return {name: value for name, value in flags.items() if value is not None}


def validation_message(exc: ValidationError) -> str:
    """pydantic's errors as `field: message; field: message` on one line."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "value"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def preset_params(preset: str, overrides: dict[str, Any]) -> CleanseParams:
    """`CleanseParams.preset(preset, **overrides)`, any problem as one CliError line (`argd.core.params` is
    pydantic only: a client command still loads no torch)."""
    try:
        return CleanseParams.preset(preset, **overrides)
    except ValidationError as exc:
        raise CliError(f"invalid parameters: {validation_message(exc)}") from None
    except ValueError as exc:
        raise CliError(f"invalid parameters: {exc}") from None


def print_json(data: Any) -> None:
    """Machine-readable output for `--json`: stable key order, one document on stdout."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def info(message: str, quiet: bool = False) -> None:
    """Human progress notes go to stderr so stdout stays clean for results."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def percent(value: Any) -> str:
    """A fraction in [0, 1] as `97.3 %`; `-` when unavailable."""
    if value is None:
        return "-"
    try:
        return f"{100.0 * float(value):.1f} %"
    except (TypeError, ValueError):
        return str(value)
