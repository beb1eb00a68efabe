"""The job status vocabulary, written down once.

A leaf module (standard library only): the database constraint, the state machine in
`argd.persistence.jobs`, the public schema and the client all read it, so the five names cannot drift apart.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class JobStatus(StrEnum):
    """Where a job is in its life; members compare equal to their strings (database values, JSON)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

JobPhase = Literal["teacher", "distill", "evaluate"]
