"""Faults of the services underneath: a private Postgres and a private Redis (own processes, temporary
folders, free ports; the shared ones are never touched) are restarted under a live API and worker.

- Postgres down: the API answers 503 with a problem body, and serves again once it is back.
- Postgres restarted while a job runs: the job still ends `succeeded`, each epoch once.
- Redis restarted (append-only, as deployed) while jobs wait in the queue: each runs exactly once.
- The API killed (SIGKILL) in the middle of an upload: no dataset row and no stored artifact appear.
- Postgres down when an upload's body ends: a 503 problem, nothing stored; restarted while the body streams:
  the whole dataset (201), never a partial one; the next upload works either way.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from argd.devserver import ServerProcess, free_port
from argd.persistence import jobs
from argd.persistence.db import dispose_engines, session_scope
from argd.persistence.keys import create_key
from argd.persistence.migrate import upgrade
from argd.persistence.settings import Settings
from argd.persistence.tempfiles import upload_dir
from argd.worker.dispatch import enqueue_job
from tests.fixtures.worker import WorkerProcess
from tests.worker.helpers import finished, submit, upload_inputs, wait_for

pytestmark = pytest.mark.service

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
REDIS = shutil.which("redis-server")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


class PrivatePostgres:
    """A Postgres cluster of this test in a temporary folder (run as the `postgres` user: initdb refuses
    root), on a free port, trust authentication on loopback."""

    def __init__(self) -> None:
        assert PG_BIN is not None
        # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
        self.root, self.port = Path(tempfile.mkdtemp(prefix="argd-test-pg-")), free_port()
        self.data = self.root / "pgdata"
        shutil.chown(self.root, "postgres")
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _as_postgres(self, tool: str, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start"
        )
        _wait_port(self.port)

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


class PrivateRedis:
    """A redis-server of this test, append-only with fsync on every write (as the compose file runs it)."""

    def __init__(self, root: Path):
        assert REDIS is not None
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            str(REDIS), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass
class Stack:
    settings: Settings
    postgres: PrivatePostgres
    redis: PrivateRedis
    worker: WorkerProcess
    api: ServerProcess
    key: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, service_settings: Settings) -> Iterator[Stack]:
    if PG_BIN is None or REDIS is None or os.geteuid() != 0:
        pytest.skip("needs root (to run Postgres as its own user), the Postgres binaries and redis-server")
    root = tmp_path_factory.mktemp("restarts")
    postgres, redis = PrivatePostgres(), PrivateRedis(root / "redis")
    postgres.start()
    redis.start()
    settings = service_settings.model_copy(
        update={
            "database_url": postgres.url,
            "broker_url": redis.url,
            "broker_transport_options": {},
            "data_dir": root / "data",
        }
    )
    upgrade(settings)
    with session_scope(settings) as session:
        key = create_key(session, "restarts", settings)
    env = settings.to_env()
    worker = WorkerProcess(env, root)
    api = ServerProcess({**env, "OMP_NUM_THREADS": "1"}, root / "api.log", cwd=REPO_ROOT)
    try:
        worker.start()
        api.start()
        yield Stack(settings, postgres, redis, worker, api, key)
    finally:
        api.stop()
        worker.stop()
        dispose_engines()
        redis.stop()
        postgres.stop()
        postgres.remove()


def _events(settings: Settings, job_id: str) -> list[tuple[str, int]]:
    with session_scope(settings) as session:
        return [(e.phase, e.epoch) for e in jobs.job_events(session, job_id)]


def test_postgres_down_is_503_and_back_is_200(stack: Stack) -> None:
    with httpx.Client(base_url=stack.api.base_url, headers={"Authorization": f"Bearer {stack.key}"}) as api:
        assert api.get("/v1/jobs").status_code == 200
        stack.postgres.stop()
        try:
            down = api.get("/v1/jobs")
            assert down.status_code == 503, down.text
            assert down.json()["code"] == "database_unavailable" and down.headers["retry-after"]
            assert api.get("/readyz").status_code == 503
        finally:
            stack.postgres.start()
        deadline = time.monotonic() + 30
        while api.get("/v1/jobs").status_code != 200:
            assert time.monotonic() < deadline, "the API did not recover after Postgres came back"
            time.sleep(0.2)


def test_postgres_restart_while_a_job_runs(stack: Stack, tmp_path: Path) -> None:
    settings = stack.settings
    dispose_engines()  # this process's pool points at the cluster being restarted
    inputs = upload_inputs(settings, tmp_path, images=768)
    job_id = submit(settings, inputs, {"epochs": 6, "seed": 2})
    enqueue_job(job_id, settings)
    wait_for(settings, job_id, lambda j: j.phase == "distill", 120, "distillation to start")
    dispose_engines()
    stack.postgres.stop()
    time.sleep(1.5)
    stack.postgres.start()
    dispose_engines()
    job = wait_for(settings, job_id, finished, 240, "the job to finish after the restart")
    assert job.status == "succeeded", (job.error_code, job.error_message, stack.worker.log_tail())
    assert _events(settings, job_id) == [("teacher", 1)] + [("distill", e) for e in range(1, 7)]


def test_redis_restart_while_jobs_are_queued(stack: Stack, tmp_path: Path) -> None:
    settings = stack.settings
    dispose_engines()
    inputs = upload_inputs(settings, tmp_path, images=128)
    stack.worker.stop()
    queued = [submit(settings, inputs, {"epochs": 1, "seed": i}) for i in range(3)]
    for job_id in queued:
        enqueue_job(job_id, settings)
    stack.redis.stop()
    stack.redis.start()  # same folder, same port: the append-only file brings the queue back
    stack.worker.start()
    for job_id in queued:
        job = wait_for(settings, job_id, finished, 180, "a queued job after the Redis restart")
        assert job.status == "succeeded" and job.attempts == 1, (job.error_code, job.error_message)
        assert _events(settings, job_id) == [("teacher", 1), ("distill", 1)]


def test_api_killed_mid_upload_leaves_no_visible_artifact(stack: Stack) -> None:
    artifacts = stack.settings.artifacts_dir
    before = {p for p in artifacts.rglob("*") if p.is_file()} if artifacts.exists() else set()
    sent = threading.Event()

    def body() -> Iterator[bytes]:
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n\r\n'
        yield head
        for index in range(400):  # 100 MiB, slowly; the server dies long before the end
            if index == 8:
                sent.set()
            yield bytes(256 << 10)
            time.sleep(0.01)

    def upload() -> None:
        headers = {"Authorization": f"Bearer {stack.key}", "Content-Type": "multipart/form-data; boundary=b"}
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{stack.api.base_url}/v1/datasets", content=body(), headers=headers, timeout=60)

    thread = threading.Thread(target=upload)
    thread.start()
    assert sent.wait(30)
    os.killpg(stack.api.pid, signal.SIGKILL)
    stack.api.process.wait(15)  # type: ignore[union-attr]
    thread.join(60)
    stack.api.start()
    with httpx.Client(base_url=stack.api.base_url, headers={"Authorization": f"Bearer {stack.key}"}) as api:
        assert api.get("/v1/datasets").json()["items"] == []
    after = {p for p in artifacts.rglob("*") if p.is_file()} if artifacts.exists() else set()
    assert after == before  # the half-received bytes never became an artifact


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


class _PausedUpload:
    """A real dataset upload streamed in two halves: it stops after the first until `resume()`."""

    def __init__(self, stack: Stack, key: str, seed: int):
        rng = np.random.default_rng(seed)
        buffer = io.BytesIO()
        np.savez(buffer, x=rng.integers(0, 256, (512, 16, 16), dtype=np.uint8), y=np.arange(512) % 4)
        payload = buffer.getvalue()
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n\r\n'
        self.parts = [head + payload[: len(payload) // 2], payload[len(payload) // 2 :] + b"\r\n--b--\r\n"]
        self.halfway, self._resume = threading.Event(), threading.Event()
        self.answer: httpx.Response | None = None
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=b"}
        self._thread = threading.Thread(target=self._send, args=(stack.api.base_url, headers))
        self._thread.start()
        assert self.halfway.wait(30), "the upload did not start"

    def _body(self) -> Iterator[bytes]:
        yield self.parts[0]
        self.halfway.set()
        self._resume.wait(60)
        yield self.parts[1]

    def _send(self, base_url: str, headers: dict[str, str]) -> None:
        self.answer = httpx.post(f"{base_url}/v1/datasets", content=self._body(), headers=headers, timeout=60)

    def resume(self) -> httpx.Response:
        self._resume.set()
        self._thread.join(60)
        assert self.answer is not None, "the upload got no answer"
        return self.answer


@pytest.fixture
def upload_key(stack: Stack) -> str:
    """A tenant of its own, so that the datasets these tests store are not another test's."""
    dispose_engines()
    with session_scope(stack.settings) as session:
        return create_key(session, f"restarts-upload-{time.monotonic_ns()}", stack.settings)


def _datasets(stack: Stack, key: str) -> list[dict[str, object]]:
    with httpx.Client(base_url=stack.api.base_url, headers={"Authorization": f"Bearer {key}"}) as api:
        deadline = time.monotonic() + 30
        while (answer := api.get("/v1/datasets")).status_code != 200:
            assert time.monotonic() < deadline, "the API did not recover after Postgres came back"
            time.sleep(0.2)
        items: list[dict[str, object]] = answer.json()["items"]
        return items


def _next_upload_works(stack: Stack, key: str) -> None:
    upload = _PausedUpload(stack, key, seed=99)
    answer = upload.resume()
    assert answer.status_code == 201, answer.text
    assert answer.json()["id"] in {item["id"] for item in _datasets(stack, key)}


@pytest.mark.parametrize("when", ["down at the end of the body", "restarted during the body"])
def test_postgres_restart_while_an_upload_streams(stack: Stack, upload_key: str, when: str) -> None:
    settings = stack.settings
    artifacts_before, uploads_before = _files(settings.artifacts_dir), _files(upload_dir(settings))
    upload = _PausedUpload(stack, upload_key, seed=1)
    stack.postgres.stop()
    try:
        if when == "down at the end of the body":
            answer = upload.resume()
        else:
            time.sleep(0.5)
            stack.postgres.start()
            answer = upload.resume()
    finally:
        if when == "down at the end of the body":
            stack.postgres.start()
    # Down when the body ends: a 503 to retry. Restarted while it streamed: nothing lost, since the upload
    # holds no connection while its body arrives and the pool replaces the ones the restart closed.
    assert answer.status_code == (503 if when == "down at the end of the body" else 201), answer.text
    listed = _datasets(stack, upload_key)
    if answer.status_code == 503:
        problem = answer.json()
        assert problem["code"] == "database_unavailable" and answer.headers["retry-after"]
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert listed == []  # nothing visible
        assert _files(settings.artifacts_dir) == artifacts_before  # and nothing stored
    else:
        assert [item["id"] for item in listed] == [answer.json()["id"]]  # the whole upload, once
    assert _files(upload_dir(settings)) == uploads_before  # the received body was removed either way
    _next_upload_works(stack, upload_key)
