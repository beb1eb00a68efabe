"""Prometheus metrics: `/metrics` of a live uvicorn server, parsed by the Prometheus text parser, moves
when a real (tiny) job runs through the session's Celery worker; only the operator's token opens it,
and the separate-port mode serves it without exposing it on the API port.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from argd.api.app import create_app
from argd.devserver import free_port
from argd.persistence.db import session_scope
from argd.persistence.models import Tenant
from argd.persistence.settings import Settings
from tests.api.test_problems import assert_problem
from tests.fixtures.receiver import Answer, Receiver, receiving
from tests.fixtures.server import METRICS_TOKEN, LiveServer, ServerProcess, make_api_key
from tests.fixtures.worker import WorkerProcess
from tests.worker.helpers import upload_inputs

pytestmark = pytest.mark.service

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of the exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and wanted <= lab)


def scrape(base_url: str, token: str = METRICS_TOKEN) -> Samples:
    response = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


@pytest.fixture
def webhook_receiver() -> Iterator[Receiver]:
    with receiving([Answer(204)]) as receiver:
        yield receiver


def _tenant_key(settings: Settings, tenant_id: str) -> str:
    with session_scope(settings) as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        name = tenant.name
    return make_api_key(settings, name)


def test_metrics_move_when_a_job_runs(
    api_server: LiveServer, worker: WorkerProcess, webhook_receiver: Receiver, tmp_path: Path
) -> None:
    inputs = upload_inputs(api_server.settings, tmp_path, images=32)
    key = _tenant_key(api_server.settings, inputs.tenant_id)
    before = scrape(api_server.base_url)
    request: dict[str, Any] = {
        "model_id": inputs.model_id,
        "clean_dataset_id": inputs.clean_id,
        "test_dataset_id": inputs.test_id,
        "params": {"epochs": 2, "teacher_epochs": 1, "batch_size": 16, "eval_batch_size": 64},
        "webhook_url": webhook_receiver.url,
    }
    with api_server.client(key) as client:
        response = client.post("/v1/jobs", json=request)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", (job, worker.log_tail())
        polls = client.get(f"/v1/jobs/{job_id}").status_code  # one more, counted below
    deadline = time.monotonic() + 30
    while True:  # the webhook goes out just after the job ends
        after = scrape(api_server.base_url)
        delivered = value(after, "argd_webhook_deliveries_total", outcome="delivered")
        if delivered > value(before, "argd_webhook_deliveries_total", outcome="delivered"):
            break
        assert time.monotonic() < deadline, "the webhook delivery never showed in the metrics"
        time.sleep(0.5)

    # Requests by route template (never the raw path) and status; latency histograms by route.
    created = {"route": "/v1/jobs", "method": "POST", "status": "202"}
    assert (
        value(after, "argd_http_requests_total", **created)
        == value(before, "argd_http_requests_total", **created) + 1
    )
    polled = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": str(polls)}
    assert (
        value(after, "argd_http_requests_total", **polled)
        >= value(before, "argd_http_requests_total", **polled) + 2
    )
    duration = {"route": "/v1/jobs/{job_id}", "method": "GET"}
    assert value(after, "argd_http_request_duration_seconds_count", **duration) >= 2
    assert value(after, "argd_http_request_duration_seconds_bucket", **duration, le="+Inf") == value(
        after, "argd_http_request_duration_seconds_count", **duration
    )
    assert not any(job_id in v for (_, labels) in after for _, v in labels)

    # Jobs by status, durations by method and device, deliveries, queue depth, heartbeats.
    assert value(after, "argd_jobs", status="succeeded") >= value(before, "argd_jobs", status="succeeded") + 1
    labels = {"method": "argd", "device": "cpu"}
    assert (
        value(after, "argd_job_duration_seconds_count", **labels)
        == value(before, "argd_job_duration_seconds_count", **labels) + 1
    )
    assert value(after, "argd_job_duration_seconds_sum", **labels) > value(
        before, "argd_job_duration_seconds_sum", **labels
    )
    assert (
        value(after, "argd_epoch_duration_seconds_count", **labels)
        == value(before, "argd_epoch_duration_seconds_count", **labels) + 3
    )  # one teacher epoch, two student epochs
    assert ("argd_queue_depth", frozenset({("queue", api_server.settings.queue)})) in after
    assert (
        value(after, "argd_up", component="database") == 1
        and value(after, "argd_up", component="broker") == 1
    )
    beats = [v for (name, _), v in after.items() if name == "argd_worker_last_heartbeat_timestamp_seconds"]
    assert beats and max(beats) > time.time() - 60


def test_only_the_operator_token_opens_metrics(api_server: LiveServer) -> None:
    url = f"{api_server.base_url}/metrics"
    for headers in ({}, {"Authorization": f"Bearer {api_server.api_key}"}, {"Authorization": "Bearer nope"}):
        response = httpx.get(url, headers=headers, timeout=30)
        body = assert_problem(response, 401, "unauthorized")
        assert "metrics token" in body["detail"] and "argd_" not in response.text
    assert "/metrics" not in httpx.get(f"{api_server.base_url}/openapi.json", timeout=30).text
    assert scrape(api_server.base_url)  # the right token


def test_no_token_no_metrics_on_the_api_port_and_a_separate_port(app_settings: Settings) -> None:
    assert app_settings.metrics_token is None
    port = free_port()
    settings = app_settings.model_copy(update={"metrics_port": port, "metrics_host": "127.0.0.1"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert_problem(client.get("/metrics"), 404, "not_found")
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
        assert response.status_code == 200
        samples = parse(response.text)
        assert ("argd_up", frozenset({("component", "database")})) in samples
        assert any(name == "argd_jobs" for name, _ in samples)
    with pytest.raises(httpx.ConnectError):  # the port goes with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


def _base(name: str) -> str:
    return re.sub(r"_(bucket|count|sum|total)$", "", name)


def test_the_grafana_dashboard_queries_only_exposed_metrics(app_settings: Settings) -> None:
    token = "operator-token-for-this-test"
    settings = app_settings.model_copy(update={"metrics_token": SecretStr(token)})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.get("/healthz")  # at least one request, so the HTTP series exist
        response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    exposed = {_base(family.name) for family in text_string_to_metric_families(response.text)}
    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text()
    )
    queried = {
        _base(name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bargd_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exposed, queried - exposed


def test_several_uvicorn_workers_share_their_counts_in_multiprocess_mode(
    service_settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {
        **os.environ,
        **service_settings.to_env(),
        "ARGD_METRICS_TOKEN": METRICS_TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "OMP_NUM_THREADS": "1",
    }
    with ServerProcess(env, tmp_path / "server.log", extra_args=("--workers", "2")) as server:
        with ThreadPoolExecutor(8) as pool:  # concurrent connections, so that both processes take some
            answers = list(pool.map(lambda _: httpx.get(f"{server.base_url}/healthz", timeout=30), range(60)))
        assert {answer.status_code for answer in answers} == {200}
        counts = set()
        for _ in range(6):  # each scrape lands on either process; each must see all 60 (+ the probe)
            counts.add(
                value(
                    scrape(server.base_url),
                    "argd_http_requests_total",
                    route="/healthz",
                    method="GET",
                    status="200",
                )
            )
    assert len(list(folder.glob("counter_*.db"))) == 2, "both processes counted"
    assert len(counts) == 1 and counts.pop() >= 60
