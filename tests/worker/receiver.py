"""A real webhook receiver for tests: `http.server` on a thread, answering each request from a script.

The n-th request gets `answers[n]` (the last answer repeats): a status code, optionally after a delay (a
receiver slower than the delivery timeout) or with a `location` (a redirect). `refusing_url` gives an address
where nothing listens (a receiver that is down).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Answer:
    """What the receiver does with one request."""

    status: int = 204
    delay_s: float = 0.0
    location: str | None = None


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it (header names in lower case)."""

    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """A local HTTP endpoint on `host`; `requests` lists what it received, in order."""

    def __init__(self, answers: Sequence[Answer], host: str = "127.0.0.1", path: str = "/hooks/argd"):
        self.answers = list(answers)
        self.requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append(Received(headers, body, time.monotonic()))
                answer = receiver.answers[min(len(receiver.requests), len(receiver.answers)) - 1]
                time.sleep(answer.delay_s)
                with contextlib.suppress(OSError):  # a client that timed out has gone
                    self.send_response(answer.status)
                    if answer.location:
                        self.send_header("location", answer.location)
                    self.send_header("content-length", "0")
                    self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        self.server: ThreadingHTTPServer = server_class((host, 0), Handler)
        self.host = host
        self.port = int(self.server.server_address[1])
        netloc = f"[{host}]" if ":" in host else host
        self.url = f"http://{netloc}:{self.port}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def receiving(answers: Sequence[Answer], host: str = "127.0.0.1") -> Iterator[Receiver]:
    server = Receiver(answers, host)
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def refusing_url(path: str = "/hooks/argd") -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: every connection is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}{path}"
