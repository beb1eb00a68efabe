"""Every way an attempt can fail maps to a stable code and a message fit for the user."""

from __future__ import annotations

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from argd.core.errors import ArgdError, Cancelled, InvalidDataset
from argd.persistence.jobs import ERROR_CODES, INTERNAL_ERROR_MESSAGE
from argd.persistence.settings import Settings
from argd.worker.runner import OOM_MESSAGE, classify_failure

SETTINGS = Settings(job_soft_time_limit_s=600, job_time_limit_s=700, visibility_timeout_s=800)


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (
            InvalidDataset("clean labels span [0, 12] but the model has 10 classes"),
            "invalid_input",
            "span [0, 12]",
        ),
        (ArgdError("distill training diverged in epoch 3", code="diverged"), "invalid_input", "diverged"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory", OOM_MESSAGE),
        (MemoryError(), "out_of_memory", OOM_MESSAGE),
        (SoftTimeLimitExceeded(), "timed_out", "time limit of 600 s"),
        (KeyError("/srv/argd/secret/path"), "internal", INTERNAL_ERROR_MESSAGE),
    ],
)
def test_failures_map_to_codes_and_user_messages(exc: BaseException, code: str, message: str) -> None:
    classified = classify_failure(exc, SETTINGS)
    assert classified is not None
    assert classified[0] == code and code in ERROR_CODES
    assert message in classified[1]
    assert "/srv/argd" not in classified[1]  # internals never reach the user


def test_cancellation_is_not_a_failure() -> None:
    assert classify_failure(Cancelled("cancelled during distill epoch 2"), SETTINGS) is None
