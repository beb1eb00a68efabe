"""`GET /v1/jobs/{id}/events`: the Server-Sent Events stream of one job.

In-process: a finished job's stream is its body then `end`; refusals are problem documents before any
stream starts. Live (uvicorn + worker): a running job's frames arrive as it trains, each one a change,
ending with the final status; a key revoked mid-stream ends the stream with a 401 problem frame. The
Python client's `wait` (behind the CLI's `--wait`) uses one stream request, and polls when a proxy
refuses the stream.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from argd.client import ArgdClient
from argd.persistence import keys
from argd.persistence.db import get_sessionmaker
from tests.api import payloads
from tests.api.test_jobs import Inputs, inputs  # noqa: F401  (the fixture)
from tests.api.test_problems import assert_problem
from tests.fixtures.proxy import prefix_proxy
from tests.fixtures.server import LiveServer
from tests.fixtures.worker import WorkerProcess

pytestmark = pytest.mark.service


def frames(lines: Any) -> list[tuple[str, Any]]:
    """(event, decoded data) of each frame, in order, from an iterator of lines."""
    out: list[tuple[str, Any]] = []
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                out.append((event, json.loads("\n".join(data))))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return out


def test_finished_job_streams_its_body_then_end(client: TestClient, inputs: Inputs) -> None:  # noqa: F811
    job = client.post("/v1/jobs", json=inputs.job()).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    response = client.get(f"/v1/jobs/{job['id']}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-store"
    assert response.text.startswith("retry: ")
    got = frames(response.text.splitlines())
    assert [event for event, _ in got] == ["job", "end"]
    assert got[0][1] == client.get(f"/v1/jobs/{job['id']}").json()
    assert got[1][1] == {"status": "canceled"}


def test_stream_refusals_are_problems(
    client: TestClient,
    anonymous: TestClient,
    inputs: Inputs,  # noqa: F811
    app: Any,
    other_tenant: Any,
) -> None:
    job = client.post("/v1/jobs", json=inputs.job()).json()
    assert_problem(anonymous.get(f"/v1/jobs/{job['id']}/events"), 401, "unauthorized")
    with TestClient(app, raise_server_exceptions=False, headers=other_tenant.headers) as other:
        assert_problem(other.get(f"/v1/jobs/{job['id']}/events"), 404, "not_found")
    assert_problem(client.get("/v1/jobs/no-such-job/events"), 404, "not_found")


def _upload_inputs(client: httpx.Client, tmp_path: Path, images: int = 64) -> tuple[str, str]:
    model = client.post(
        "/v1/models",
        files={"file": ("m.safetensors", payloads.safetensors_bytes(payloads.state_dict(), tmp_path))},
        data={"spec": payloads.spec_json()},
    )
    assert model.status_code == 201, model.text
    x, y = payloads.images(images)
    clean = client.post("/v1/datasets", files={"file": ("c.npz", payloads.npz_bytes(x, y))})
    assert clean.status_code == 201, clean.text
    return model.json()["id"], clean.json()["id"]


def test_live_stream_follows_a_job_and_stops_for_a_revoked_key(
    api_server: LiveServer, worker: WorkerProcess, tmp_path: Path
) -> None:
    tenant = f"events-{time.monotonic_ns()}"
    key, spare = api_server.new_key(tenant), api_server.new_key(tenant)
    with api_server.client(key) as client, api_server.client(spare) as admin:
        # Enough steps per epoch (a second or so) that the half-second tick sees the epochs one by one.
        model_id, clean_id = _upload_inputs(client, tmp_path, images=2048)
        params = {"teacher_epochs": 2, "epochs": 4, "batch_size": 16, "val_fraction": 0.25}
        job = client.post(
            "/v1/jobs", json={"model_id": model_id, "clean_dataset_id": clean_id, "params": params}
        ).json()
        with client.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=120) as response:
            assert response.status_code == 200
            got = frames(response.iter_lines())
        events = [event for event, _ in got]
        assert events[-1] == "end" and set(events[:-1]) == {"job"}, events
        bodies = [data for event, data in got if event == "job"]
        assert bodies[-1]["status"] == "succeeded" and got[-1][1] == {"status": "succeeded"}
        assert bodies[-1] == client.get(f"/v1/jobs/{job['id']}").json()
        # Pushed as it ran: several distinct states, history growing epoch by epoch, never repeated.
        assert any(body["status"] == "running" for body in bodies)
        lengths = [len(body["history"]) for body in bodies]
        assert lengths == sorted(lengths) and len(set(lengths)) >= 3, lengths
        assert any(0 < n < lengths[-1] for n in lengths), lengths  # seen part-way, not only at the ends
        assert all(a != b for a, b in itertools.pairwise(bodies))

        # A long job, and its key revoked while the stream is open: a 401 problem frame ends it.
        long_params = {"teacher_epochs": 1, "epochs": 1000, "batch_size": 16}
        slow = client.post(
            "/v1/jobs", json={"model_id": model_id, "clean_dataset_id": clean_id, "params": long_params}
        ).json()
        try:
            with client.stream("GET", f"/v1/jobs/{slow['id']}/events", timeout=60) as response:
                lines = response.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                assert json.loads(first[5:])["id"] == slow["id"]
                session = get_sessionmaker(api_server.settings)()
                try:
                    assert keys.revoke_key(session, key[: len(keys.KEY_PREFIX) + 8]) == 1
                    session.commit()
                finally:
                    session.close()
                rest = frames(lines)
            assert rest[-1][0] == "problem", rest
            assert rest[-1][1]["status"] == 401 and rest[-1][1]["code"] == "unauthorized"
            assert_problem(client.get(f"/v1/jobs/{slow['id']}"), 401, "unauthorized")
        finally:
            assert admin.post(f"/v1/jobs/{slow['id']}/cancel").status_code in (200, 202)


class RecordingTransport(httpx.HTTPTransport):
    """The ordinary network transport, noting the method and path of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


def test_client_wait_follows_the_stream_and_polls_behind_a_proxy_that_refuses_it(
    api_server: LiveServer, worker: WorkerProcess, tmp_path: Path
) -> None:
    key = api_server.new_key(f"wait-{time.monotonic_ns()}")
    params = {"teacher_epochs": 2, "epochs": 2, "batch_size": 16}
    direct = RecordingTransport()
    with ArgdClient(api_server.base_url, key, transport=direct) as client:
        model_id, clean_id = _upload_inputs(client._http, tmp_path, images=2048)
        job = client.create_job(model_id, clean_id, params=params)
        seen: list[dict[str, Any]] = []
        final = client.wait(job["id"], on_progress=seen.append)
    assert final["status"] == "succeeded" and seen[-1] == final and len(seen) >= 3
    # One stream request and not a single poll of the job.
    after_create = direct.sent[direct.sent.index("POST /v1/jobs") + 1 :]
    assert after_create == [f"GET /v1/jobs/{job['id']}/events"], after_create

    with prefix_proxy(api_server.base_url, "/argd", refuse="/events") as base:
        behind = RecordingTransport()
        with ArgdClient(base, key, transport=behind) as client:
            job = client.create_job(model_id, clean_id, params=params)
            final = client.wait(job["id"], poll_interval=0.2)
    assert final["status"] == "succeeded"
    after_create = behind.sent[behind.sent.index("POST /argd/v1/jobs") + 1 :]
    assert after_create[0] == f"GET /argd/v1/jobs/{job['id']}/events"
    polls = after_create[1:]
    assert len(polls) >= 2 and set(polls) == {f"GET /argd/v1/jobs/{job['id']}"}, after_create
