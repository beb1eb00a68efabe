"""Progress bars (terminal only) and the client's reading of problem-details errors."""

from __future__ import annotations

import io

import httpx
import pytest

from argd.cli.main import describe_error, main
from argd.cli.progress import PhaseBar, bar_enabled, engine_progress, format_seconds, job_progress
from argd.client import ApiError, ArgdClient, JobTimeout, ServerUnreachable
from argd.core.errors import InvalidModel
from argd.core.trainer import ProgressEvent


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, to see what a user would see."""

    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_and_never_when_quiet() -> None:
    assert bar_enabled(False, Terminal()) is True
    assert bar_enabled(True, Terminal()) is False
    assert bar_enabled(False, io.StringIO()) is False


def test_engine_events_fill_one_bar_per_phase() -> None:
    screen = Terminal()
    with PhaseBar(True, screen) as bar:
        on_event = engine_progress(bar)
        for epoch in (1, 2):
            for batch in (1, 2, 3):
                on_event(ProgressEvent("teacher", epoch, 2, batch, 3, {"ce": 0.5}))
            on_event(ProgressEvent("teacher", epoch, 2, 3, 3, {"ce": 0.4}, {}, end_of_epoch=True))
        assert bar._bar is not None and bar._bar.n == bar._bar.total == 6
        on_event(ProgressEvent("evaluate", 0, 0, 0, 0, {}, {"teacher": {}}))  # no epochs: no bar change
        on_event(ProgressEvent("distill", 1, 4, 1, 3, {"ce": 0.3, "node": 0.01}))
        assert bar._bar.total == 12 and bar._bar.n == 1
    text = screen.getvalue()
    assert "teacher" in text and "100%" in text and "distill" in text
    assert "epoch 2/2 ce=0.4" in text and "epoch 1/4 ce=0.3 node=0.01" in text


def test_disabled_bar_writes_nothing() -> None:
    screen = io.StringIO()
    with PhaseBar(False, screen) as bar:
        engine_progress(bar)(ProgressEvent("teacher", 1, 2, 1, 3))
        job_progress(bar)({"status": "running", "phase": "distill", "progress": {"epoch": 1, "epochs": 3}})
    assert screen.getvalue() == ""


def test_job_bodies_drive_the_bar_by_epoch() -> None:
    screen = Terminal()
    with PhaseBar(True, screen, unit="epoch") as bar:
        on_job = job_progress(bar)
        on_job({"status": "queued", "progress": {}})
        on_job({"status": "running", "phase": "teacher", "progress": {"epoch": 2, "epochs": 5, "eta_s": 75}})
        assert (bar._bar.n, bar._bar.total) == (2, 5)
        on_job({"status": "running", "phase": "distill", "progress": {"epoch": 10, "epochs": 10, "eta_s": 0}})
        assert (bar._bar.n, bar._bar.total) == (10, 10)
    assert "eta 1m15s" in screen.getvalue() and "waiting for a worker" in screen.getvalue()
    assert format_seconds(5) == "5s" and format_seconds("soon") == "soon"


def _response(status: int, body: bytes, content_type: str = "application/problem+json") -> httpx.Response:
    request = httpx.Request("GET", "http://argd.test/v1/jobs/x")
    return httpx.Response(status, content=body, headers={"content-type": content_type}, request=request)


def test_api_error_reads_problem_details() -> None:
    body = b'{"type": "about:blank", "title": "Not Found", "status": 404, "detail": "No job with id x"}'
    error = ApiError.from_response(_response(404, body))
    assert (error.status, error.title, error.detail) == (404, "Not Found", "No job with id x")
    assert str(error) == "HTTP 404 Not Found: No job with id x (GET http://argd.test/v1/jobs/x)"
    assert error.problem_type == "about:blank"


def test_api_error_survives_bodies_that_are_not_problems() -> None:
    html = ApiError.from_response(_response(502, b"<html>Bad Gateway</html>", "text/html"))
    assert html.status == 502 and html.title == "Bad Gateway" and "Bad Gateway" in (html.detail or "")
    empty = ApiError.from_response(_response(503, b""))
    assert empty.title == "Service Unavailable" and empty.detail is None
    listed = ApiError.from_response(_response(422, b'{"title": "Invalid", "detail": [{"loc": ["body"]}]}'))
    assert listed.detail == '[{"loc":["body"]}]'


def test_client_raises_api_error_from_a_real_transport() -> None:
    """A real httpx client on a handler transport: the client's own request path, no server process."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer argd_k"
        if request.url.path == "/v1/jobs/gone":
            return httpx.Response(404, json={"title": "Not Found", "detail": "No job with id 'gone'"})
        return httpx.Response(200, json={"id": "j1", "status": "running", "progress": {}})

    with ArgdClient("http://argd.test/", "argd_k", transport=httpx.MockTransport(handler)) as client:
        assert client.get_job("j1")["status"] == "running"
        with pytest.raises(ApiError) as raised:
            client.get_job("gone")
        assert raised.value.status == 404 and "gone" in str(raised.value)
        with pytest.raises(JobTimeout):
            client.wait("j1", poll_interval=0.01, timeout=0.05)


def test_error_mapping_to_exit_codes() -> None:
    assert describe_error(InvalidModel("missing keys: fc.weight")) == (2, "missing keys: fc.weight")
    assert describe_error(ServerUnreachable("http://x", "refused"))[0] == 3
    assert describe_error(ApiError(409, "Conflict", "job is running"))[0] == 3
    code, message = describe_error(RuntimeError("boom\nsecond line"))
    assert code == 1 and message.startswith("internal error: RuntimeError: boom second line")


def test_bench_is_dispatched_to_the_benchmark_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0
    assert "argd bench" in capsys.readouterr().out
    assert main(["bench", "no-such-benchmark"]) == 2


def test_wait_rides_out_a_restarting_server_but_not_a_missing_job() -> None:
    answers = iter([503, 503, 200])
    polled: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if "/missing" in request.url.path:  # the job, and its event stream
            return httpx.Response(404, json={"title": "Not Found", "detail": "No job with id 'missing'"})
        status = next(answers)
        if status != 200:
            return httpx.Response(status, json={"title": "Service Unavailable"})
        return httpx.Response(200, json={"id": "j1", "status": "succeeded"})

    with ArgdClient("http://argd.test", "argd_k", transport=httpx.MockTransport(handler)) as client:
        job = client.wait("j1", on_progress=lambda j: polled.append(j["status"]), poll_interval=0.001)
        assert job["status"] == "succeeded" and polled == ["succeeded"]
        with pytest.raises(ApiError) as raised:
            client.wait("missing", poll_interval=0.001)
        assert raised.value.status == 404
