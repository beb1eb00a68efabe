"""The API under test for the service benchmarks: uvicorn in a subprocess on 127.0.0.1, with its settings."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, text

from argd.devserver import ServerProcess
from argd.persistence.settings import Settings

DEFAULT_ADMIN_URL = os.environ.get(
    "ARGD_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
READY_TIMEOUT_S = 90.0
REPO_ROOT = Path(__file__).resolve().parents[1]


def api_server(env: dict[str, str], log_path: Path, workers: int = 1) -> ServerProcess:
    """The API under test: uvicorn with `workers` worker processes, no access log, on this repository."""
    return ServerProcess(
        {**os.environ, **env},
        log_path,
        extra_args=["--workers", str(workers), "--no-access-log"],
        ready_timeout_s=READY_TIMEOUT_S,
        cwd=REPO_ROOT,
    )


def server_env(settings: Settings) -> dict[str, str]:
    """The server's environment: `settings` (database, data directory, limits) with the embedded broker,
    so nothing here needs Redis (the benchmarks enqueue nothing), and one torch thread."""
    embedded = settings.model_copy(update={"broker_url": "filesystem://", "broker_transport_options": {}})
    return {**embedded.to_env(), "OMP_NUM_THREADS": "1"}


def server_version(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar())
    finally:
        engine.dispose()
