"""Errors raised by the engine, each with a stable machine-readable code.

The service maps them to HTTP problem details and job errors; the CLI prints the message on one line.
"""

from __future__ import annotations

from typing import Any


class ArgdError(Exception):
    """Base class: `code` is stable and machine-readable, `message` is for humans, `details` is JSON-able."""

    code = "internal"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code is not None:
            self.code = code


class InvalidInput(ArgdError):
    """The user's model, data or parameters cannot be used; nothing was executed from them."""

    code = "invalid_input"


class InvalidModel(InvalidInput):
    code = "invalid_model"


class InvalidDataset(InvalidInput):
    code = "invalid_dataset"


class Cancelled(ArgdError):
    """Raised between batches when the cancellation check says so."""

    code = "canceled"
