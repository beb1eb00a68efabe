"""The hostile-file corpus (tests/hostile/corpus.py) and hostile form fields, tried through the API and
through `argd cleanse`: each gets a 4xx (CLI: exit 2) naming the problem, nothing executes, and nothing
is left on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from argd.cli.common import EXIT_USAGE
from argd.cli.main import main
from argd.persistence.settings import Settings
from tests.api import payloads
from tests.api.conftest import TenantAccount, stored_files
from tests.hostile.corpus import CORPUS, MARKER, Hostile, write_corpus

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    MARKER.unlink(missing_ok=True)
    return write_corpus(tmp_path_factory.mktemp("hostile"))


def _refused(response: Any) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] and len(body["detail"]) > 10 and "Traceback" not in response.text
    return dict(body)


@pytest.mark.parametrize("entry", CORPUS, ids=[entry.name for entry in CORPUS])
def test_the_api_refuses_each_hostile_file(
    client: TestClient, app_settings: Settings, tenant: TenantAccount, corpus: dict[str, Path], entry: Hostile
) -> None:
    before = stored_files(app_settings)
    data = corpus[entry.name].read_bytes()
    if entry.kind == "model":
        response = client.post(
            "/v1/models", files={"file": (entry.filename, data)}, data={"spec": payloads.spec_json()}
        )
    else:
        response = client.post("/v1/datasets", files={"file": (entry.filename, data)})
    _refused(response)
    assert stored_files(app_settings) == before  # no artifact, no scratch file left
    assert tenant.counts() == {"models": 0, "datasets": 0, "jobs": 0}
    assert not MARKER.exists(), "a hostile file executed code"


@pytest.fixture(scope="module")
def good_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("good")
    (root / "model.safetensors").write_bytes(payloads.safetensors_bytes(payloads.state_dict(), root))
    (root / "spec.json").write_text(payloads.spec_json())
    (root / "clean.npz").write_bytes(payloads.npz_bytes(*payloads.images(16)))
    return {"model": root / "model.safetensors", "spec": root / "spec.json", "clean": root / "clean.npz"}


@pytest.mark.parametrize("entry", CORPUS, ids=[entry.name for entry in CORPUS])
def test_cleanse_refuses_each_hostile_file(
    corpus: dict[str, Path],
    good_inputs: dict[str, Path],
    entry: Hostile,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = corpus[entry.name] if entry.kind == "model" else good_inputs["model"]
    clean = corpus[entry.name] if entry.kind == "dataset" else good_inputs["clean"]
    out = tmp_path / "out"
    argv = ["cleanse", "--model", str(model), "--spec", str(good_inputs["spec"]), "--clean", str(clean)]
    assert main([*argv, "--epochs", "1", "--out", str(out), "--quiet"]) == EXIT_USAGE
    error = capsys.readouterr().err.strip()
    assert error.startswith("argd: error:") and len(error.splitlines()) == 1 and "internal" not in error
    assert not out.exists() and not MARKER.exists()


def _multipart(filename: bytes, content: bytes) -> tuple[bytes, str]:
    boundary = "argd-hostile-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    "filename",
    [b"../../etc/cron.d/x.npz", b"a\x00b.npz", b"x" * 300 + b".npz", b"\xff\xfe\xfd.npz", b"..\\..\\x.npz"],
    ids=["dot-dot", "nul", "very-long", "non-utf8", "backslash-dot-dot"],
)
def test_hostile_file_names_are_refused(
    client: TestClient, app_settings: Settings, tenant: TenantAccount, filename: bytes
) -> None:
    before = stored_files(app_settings)
    body, content_type = _multipart(filename, payloads.npz_bytes(*payloads.images(8)))
    response = client.post("/v1/datasets", content=body, headers={"Content-Type": content_type})
    problem = _refused(response)
    assert problem["code"] == "invalid_filename", problem
    assert stored_files(app_settings) == before and tenant.counts()["datasets"] == 0


def test_hostile_json_is_refused(client: TestClient, tmp_path: Path, tenant: TenantAccount) -> None:
    weights = payloads.safetensors_bytes(payloads.state_dict(), tmp_path)
    for spec in (
        "{" * 10 + " " * (10 << 20),
        "[" * 50_000 + "]" * 50_000,
        '{"a":' * 20_000 + "1" + "}" * 20_000,
    ):
        response = client.post("/v1/models", files={"file": ("m.safetensors", weights)}, data={"spec": spec})
        _refused(response)
    assert tenant.counts()["models"] == 0
    model = client.post(
        "/v1/models", files={"file": ("m.safetensors", weights)}, data={"spec": payloads.spec_json()}
    ).json()
    clean = client.post(
        "/v1/datasets", files={"file": ("c.npz", payloads.npz_bytes(*payloads.images(8)))}
    ).json()
    deep = '{"a":' * 5_000 + "1" + "}" * 5_000
    ids = f'"model_id": "{model["id"]}", "clean_dataset_id": "{clean["id"]}"'
    bodies = [f'{{{ids}, "params": {deep}}}'.encode(), b"[" * 100_000]
    bodies += [
        json.dumps(
            {"model_id": model["id"], "clean_dataset_id": clean["id"], "params": {"epochs": epochs}}
        ).encode()
        for epochs in (-1, 0, 10**12, 1e308, "ten", None)
    ]
    for raw in bodies:
        response = client.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
        _refused(response)
    assert tenant.counts()["jobs"] == 0


def test_nul_characters_anywhere_are_refused_not_500(client: TestClient, tenant: TenantAccount) -> None:
    """Postgres text cannot hold NUL: ids with one are simply unknown (404), other fields a 422."""
    clean = client.post("/v1/datasets", files={"file": ("c.npz", payloads.npz_bytes(*payloads.images(8)))})
    assert clean.status_code == 201
    assert _refused(client.get("/v1/jobs/a%00b"))["code"] == "not_found"
    body = {"model_id": "m\u0000", "clean_dataset_id": clean.json()["id"]}
    assert _refused(client.post("/v1/jobs", json=body))["code"] == "not_found"
    named = client.post(
        "/v1/datasets",
        files={"file": ("d.npz", payloads.npz_bytes(*payloads.images(8)))},
        data={"name": "evil\u0000name"},
    )
    assert _refused(named)["code"] == "invalid_value"
    assert tenant.counts()["datasets"] == 1
