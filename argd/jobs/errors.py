"""What the job service refuses, by kind; each adapter decides how to say it (the API: problem details).

Every refusal carries a stable `code` (the API's problem code) and a message meant for the user.
"""

from __future__ import annotations

from typing import Any


class JobRefusal(Exception):
    """Base class: the request cannot be carried out as asked."""

    def __init__(self, code: str, message: str, *, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class InvalidJobRequest(JobRefusal):
    """The request's content is wrong: inputs that do not fit the model, a reused idempotency key, ..."""


class InvalidIdempotencyKey(JobRefusal):
    """The Idempotency-Key itself is malformed (not the request it came with)."""


class NotFound(JobRefusal):
    """The job, or an input it names, does not exist for this tenant."""


class JobConflict(JobRefusal):
    """The job's status does not allow this now (cancel a finished job, delete a running one)."""


class QueueUnavailable(JobRefusal):
    """The job could not be handed to the workers; nothing was created."""


class QuotaExceeded(JobRefusal):
    """Past one of the tenant's quotas; `status` is 413 (too big by itself) or 429 (try again later)."""

    def __init__(self, status: int, quota: str, message: str, *, limit: int, used: int):
        super().__init__("quota_exceeded", message, details={"quota": quota, "limit": limit, "used": used})
        self.status = status
        self.quota = quota
