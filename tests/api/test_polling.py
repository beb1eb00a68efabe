# ruff: noqa: F811  (the `inputs` fixture of test_jobs, imported, is named as the tests' parameter)
"""The polling path is cheap: ETags with 304 for unchanged jobs and pages, and an index for every query the
routes make (each statement they send is EXPLAINed on Postgres with sequential scans priced out).

`ARGD_EXPLAIN_OUT=file` writes the plans (docs/internals.md quotes them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, text, update

from argd.persistence import jobs as job_state
from argd.persistence.db import get_sessionmaker
from argd.persistence.models import Job, utcnow
from argd.persistence.settings import Settings
from tests.api.test_jobs import Inputs, inputs  # noqa: F401  (the fixture)

pytestmark = pytest.mark.service


def _etag(response: Any) -> str:
    tag = response.headers.get("etag")
    assert tag and tag.startswith('"') and tag.endswith('"'), response.headers
    return str(tag)


def test_an_unchanged_job_answers_304_until_it_changes(
    client: TestClient, inputs: Inputs, app_settings: Settings
) -> None:
    job = client.post("/v1/jobs", json=inputs.job()).json()
    first = client.get(f"/v1/jobs/{job['id']}")
    tag = _etag(first)
    again = client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and _etag(again) == tag
    assert client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": f'W/{tag}, "x"'}).status_code == 304
    assert client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": '"other"'}).status_code == 200

    # "Running" with a heartbeat far ahead, so that the session worker's recovery timer (same database)
    # never takes it for a lost job and runs it; it is canceled at the end.
    alive = {"status": "running", "attempts": 1, "heartbeat_at": utcnow() + timedelta(days=1)}
    with get_sessionmaker(app_settings)() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(**alive))
        session.commit()
        tag_running = _etag(client.get(f"/v1/jobs/{job['id']}"))
        assert tag_running != tag  # a public field changed
        beat = utcnow() + timedelta(days=2)  # a heartbeat changes no public field: the tag stays
        session.execute(update(Job).where(Job.id == job["id"]).values(heartbeat_at=beat))
        session.commit()
        assert client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": tag_running}).status_code == 304
        job_state.record_epoch(session, job["id"], 1, phase="teacher", epoch=1, losses={"ce": 1.0})
        session.commit()
        changed = client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": tag_running})
        assert changed.status_code == 200 and len(changed.json()["history"]) == 1
        # The same epoch recorded again (a resumed attempt) replaces the event: a new tag, one entry.
        job_state.record_epoch(session, job["id"], 1, phase="teacher", epoch=1, losses={"ce": 0.5})
        session.commit()
        replaced = client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": _etag(changed)})
        assert replaced.status_code == 200 and replaced.json()["history"][0]["losses"] == {"ce": 0.5}
        session.execute(update(Job).where(Job.id == job["id"]).values(status="canceled"))
        session.commit()


def test_job_pages_carry_an_etag(client: TestClient, inputs: Inputs) -> None:
    client.post("/v1/jobs", json=inputs.job())
    page = client.get("/v1/jobs?limit=5")
    tag = _etag(page)
    assert client.get("/v1/jobs?limit=5", headers={"If-None-Match": tag}).status_code == 304
    client.post("/v1/jobs", json=inputs.job())
    assert client.get("/v1/jobs?limit=5", headers={"If-None-Match": tag}).status_code == 200


def test_another_tenant_gets_404_not_304(client: TestClient, inputs: Inputs, other_tenant: Any) -> None:
    job = client.post("/v1/jobs", json=inputs.job()).json()
    tag = _etag(client.get(f"/v1/jobs/{job['id']}"))
    stranger = client.get(f"/v1/jobs/{job['id']}", headers={**other_tenant.headers, "If-None-Match": tag})
    assert stranger.status_code == 404


@pytest.fixture
def statements(app: FastAPI) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the app sends to the database while the test runs (on the app's own engine, which
    stays the app's even after another test made the process drop its cached engines)."""
    seen: list[tuple[str, Any]] = []
    engine = app.state.sessionmaker.kw["bind"]

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
        if not many:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


READS = re.compile(r"^\s*(SELECT|UPDATE|DELETE)\b", re.IGNORECASE)
TRIVIAL = re.compile(r"^\s*SELECT\s+(1|pg_|version|current_)", re.IGNORECASE)


def test_every_query_of_the_routes_has_an_index(
    app: FastAPI,
    client: TestClient,
    inputs: Inputs,
    app_settings: Settings,
    statements: list[tuple[str, Any]],
) -> None:
    created = [client.post("/v1/jobs", json=inputs.job()).json() for _ in range(3)]
    keyed = client.post("/v1/jobs", json=inputs.job(), headers={"Idempotency-Key": "poll-1"})
    assert keyed.status_code == 202
    first = created[0]["id"]
    cursor = client.get("/v1/jobs?limit=1").json()["next_cursor"]
    for path in (
        f"/v1/jobs/{first}",
        "/v1/jobs",
        "/v1/jobs?status=queued&limit=2",
        f"/v1/jobs?limit=1&cursor={cursor}",
        "/v1/models",
        f"/v1/models/{inputs.model['id']}",
        "/v1/datasets",
        f"/v1/datasets/{inputs.clean['id']}",
    ):
        assert client.get(path).status_code == 200, path
    assert client.delete(f"/v1/datasets/{inputs.clean['id']}").status_code == 409  # jobs use it
    assert client.delete(f"/v1/models/{inputs.model['id']}").status_code == 409
    assert client.post(f"/v1/jobs/{first}/cancel").status_code == 200
    assert client.delete(f"/v1/jobs/{first}").status_code == 204

    plans = []
    with app.state.sessionmaker.kw["bind"].connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))  # a missing index then shows as a Seq Scan
        for statement, parameters in statements:
            if not READS.match(statement) or TRIVIAL.match(statement):
                continue
            plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
            plans.append((statement, plan))
        conn.rollback()
    assert len(plans) >= 10, plans
    scans = [(s, p) for s, p in plans if "Seq Scan" in p]
    assert not scans, "a route query without an index:\n" + "\n\n".join(f"{s}\n{p}" for s, p in scans)
    out = os.environ.get("ARGD_EXPLAIN_OUT")
    if out:
        unique = dict(plans)
        Path(out).write_text("\n\n".join(f"{s}\n{p}" for s, p in unique.items()) + "\n")
