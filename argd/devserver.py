"""A local API server in a child process, for the test fixtures, the service benchmark and `argd demo`.

`ServerProcess` starts the API (`uvicorn --factory argd.api.app:create_app`, or `argd serve` with its
worker) on a free 127.0.0.1 port in its own process group with its output in a log file, waits until a
probe answers 200, and stops it: SIGTERM to the leader (which stops its own workers), SIGKILL to the
whole group if that takes too long. A port chosen here can be taken before the child binds it, so a start
on a chosen port is retried on a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

__all__ = ["ARGD_SERVE", "UVICORN_APP", "ServerProcess", "ServerStartError", "free_port"]

#: `python` arguments that run the API alone (what a deployment runs behind its process manager).
UVICORN_APP = ("-m", "uvicorn", "--factory", "argd.api.app:create_app")
#: `python` arguments that run the embedded service: the API and one worker, schema already migrated.
ARGD_SERVE = ("-m", "argd.cli", "serve", "--no-migrate")

HOST = "127.0.0.1"
START_ATTEMPTS = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerStartError(RuntimeError):
    """The server exited at start or did not answer its probe in time; the message ends with its log."""


class ServerProcess:
    """The API in a child process on 127.0.0.1; also a context manager (start on enter, stop on exit).

    `env` is the child's whole environment (PYTHONUNBUFFERED is added); `program` the `python` arguments
    before `--host/--port/--log-level`, and `extra_args` what follows them (e.g. `--workers 4`). With
    `port=0` a free port is chosen for each attempt.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        program: Sequence[str] = UVICORN_APP,
        extra_args: Sequence[str] = (),
        port: int = 0,
        ready_path: str = "/healthz",
        ready_timeout_s: float = 60.0,
        cwd: Path | None = None,
    ):
        self.env = dict(env)
        self.log_path = log_path
        self.program = tuple(program)
        self.extra_args = tuple(extra_args)
        self.fixed_port = port
        self.port = port
        self.ready_path = ready_path
        self.ready_timeout_s = ready_timeout_s
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The leader's pid (uvicorn's supervisor when it runs several workers)."""
        if self.process is None:
            raise RuntimeError("the server is not started")
        return self.process.pid

    def start(self) -> ServerProcess:
        """Start the server and return once its probe answers 200; ServerStartError otherwise."""
        env = {**self.env, "PYTHONUNBUFFERED": "1"}
        attempts = 1 if self.fixed_port else START_ATTEMPTS
        exit_code: int | None = None
        for _ in range(attempts):
            self.port = self.fixed_port or free_port()
            command = [
                sys.executable, *self.program,
                "--host", HOST, "--port", str(self.port), "--log-level", "warning",
                *self.extra_args,
            ]  # fmt: skip
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.cwd,
                )
            try:
                ready = self._wait_ready()
            except BaseException:  # e.g. Ctrl-C while waiting: the child is in its own session, stop it here
                self.stop()
                raise
            if ready:
                return self
            exit_code = self.process.poll()
            self.stop()
        if exit_code is not None:
            why = f"exited with code {exit_code} at start"
        else:
            why = f"was not ready after {self.ready_timeout_s:.0f}s"
        raise ServerStartError(f"the API server {why}; its log ends with:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        """Poll the probe until it answers 200; False once the process exits or the time is up."""
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # e.g. the port was taken between choosing and binding it
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}{self.ready_path}", timeout=2).status_code == 200:
                    return True
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the leader (graceful: it stops its own workers), SIGKILL to the group if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def rss_bytes(self) -> int:
        """Resident memory of the leader process (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the server's log ("" before anything was written)."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
