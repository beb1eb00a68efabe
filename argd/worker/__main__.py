"""`python -m argd.worker`: run one worker with the ARGD_* settings of the environment."""

from __future__ import annotations

import os

from argd.worker.main import run_worker

if __name__ == "__main__":
    run_worker(loglevel=os.environ.get("ARGD_LOG_LEVEL", "INFO"))
