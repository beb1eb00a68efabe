"""Model and dataset intake over HTTP: good uploads are stored and described, bad ones refused with a 4xx
problem that names the trouble, and nothing of a refused upload is kept (no rows, no files)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from argd.persistence.artifacts import LocalArtifactStore
from argd.persistence.settings import Settings
from tests.api import payloads
from tests.api.conftest import TenantAccount, stored_files
from tests.api.test_problems import assert_problem

pytestmark = pytest.mark.service


def upload_model(client: TestClient, data: bytes, filename: str = "w.safetensors", spec: str | None = None):
    return client.post(
        "/v1/models",
        files={"file": (filename, data, "application/octet-stream")},
        data={"spec": payloads.spec_json() if spec is None else spec},
    )


def upload_dataset(client: TestClient, data: bytes, filename: str = "d.npz"):
    return client.post("/v1/datasets", files={"file": (filename, data, "application/octet-stream")})


# --- models ---------------------------------------------------------------------------------------------


def test_safetensors_model_is_validated_stored_and_described(
    client: TestClient, tmp_path: Path, app_settings: Settings
) -> None:
    state = payloads.state_dict()
    data = payloads.safetensors_bytes(state, tmp_path)
    response = upload_model(client, data, "tiny.safetensors")
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/models/{body['id']}"
    assert body["name"] == body["filename"] == "tiny.safetensors"
    assert body["upload_sha256"] == hashlib.sha256(data).hexdigest()
    assert body["spec"]["architecture"] == "small-cnn" and body["spec"]["num_classes"] == 4
    expected_parameters = sum(
        v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k
    )
    assert body["parameters"] == expected_parameters
    stored = LocalArtifactStore(app_settings.artifacts_dir).path_of(body["sha256"])
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == body["sha256"]
    assert body["size_bytes"] == stored.stat().st_size
    reloaded = load_file(stored)
    assert all(torch.equal(reloaded[key], value) for key, value in state.items())

    assert client.get(f"/v1/models/{body['id']}").json() == body
    assert [item["id"] for item in client.get("/v1/models").json()["items"]] == [body["id"]]


def test_training_checkpoint_with_optimizer_is_accepted_and_converted(
    client: TestClient, app_settings: Settings
) -> None:
    """The layout of released research checkpoints: {'epoch', 'state_dict', 'best_prec', 'optimizer'}."""
    state = payloads.state_dict(seed=3)
    response = upload_model(client, payloads.training_checkpoint(state), "model_best.pth.tar", None)
    assert response.status_code == 201, response.text
    body = response.json()
    stored = LocalArtifactStore(app_settings.artifacts_dir).path_of(body["sha256"])
    reloaded = load_file(stored)  # a .tar upload became safetensors
    assert set(reloaded) == set(state)
    assert torch.equal(reloaded["fc.weight"], state["fc.weight"])
    response = client.post(
        "/v1/models",
        files={"file": ("m.pt", payloads.checkpoint_bytes(state), "application/octet-stream")},
        data={"spec": payloads.spec_json(), "name": "bare state dict"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "bare state dict"


def test_model_listing_paginates_newest_first(client: TestClient, tmp_path: Path) -> None:
    ids = []
    for seed in range(3):
        data = payloads.safetensors_bytes(payloads.state_dict(seed=seed), tmp_path)
        ids.append(upload_model(client, data).json()["id"])
    first = client.get("/v1/models", params={"limit": 2}).json()
    assert [m["id"] for m in first["items"]] == ids[::-1][:2]
    second = client.get("/v1/models", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [m["id"] for m in second["items"]] == ids[:1] and second["next_cursor"] is None
    assert_problem(client.get("/v1/models", params={"cursor": "garbage!"}), 422, "invalid_cursor")


def _bad_model_cases(tmp_path: Path) -> list[tuple[str, bytes, str, str | None, str]]:
    """(case, file bytes, file name, spec JSON or None for the default, expected problem code)."""
    good = payloads.state_dict()
    nan_state = {k: v.clone() for k, v in good.items()}
    nan_state["stage2.0.weight"][0, 0, 0, 0] = float("nan")
    full = payloads.safetensors_bytes(good, tmp_path)
    wrong_arch = payloads.state_dict(payloads.SPEC.model_copy(update={"arch_kwargs": {"width": 8}}))
    return [
        ("torchscript", payloads.torchscript_bytes(), "m.pt", None, "invalid_model"),
        ("truncated safetensors", full[: len(full) // 2], "m.safetensors", None, "invalid_model"),
        (
            "wrong class count",
            payloads.safetensors_bytes(good, tmp_path),
            "m.safetensors",
            payloads.spec_json(num_classes=7),
            "invalid_model",
        ),
        (
            "wrong architecture",
            payloads.safetensors_bytes(good, tmp_path),
            "m.safetensors",
            payloads.spec_json(architecture="wrn-16-1", in_channels=1, image_size=16, arch_kwargs={}),
            "invalid_model",
        ),
        ("other width", payloads.checkpoint_bytes(wrong_arch), "m.pth", None, "invalid_model"),
        (
            "nan weights",
            payloads.safetensors_bytes(nan_state, tmp_path),
            "m.safetensors",
            None,
            "invalid_model",
        ),
        (
            "unknown architecture",
            full,
            "m.safetensors",
            payloads.spec_json(architecture="alexnet"),
            "invalid_model",
        ),
        ("spec not json", full, "m.safetensors", "{architecture: small-cnn", "invalid_spec"),
        (
            "spec missing field",
            full,
            "m.safetensors",
            json.dumps({"architecture": "small-cnn"}),
            "invalid_spec",
        ),
        ("spec extra field", full, "m.safetensors", payloads.spec_json(colour="blue"), "invalid_spec"),
        ("not weights at all", b"hello world" * 100, "m.pt", None, "invalid_model"),
        ("empty file", b"", "m.safetensors", None, "invalid_model"),
        ("wrong extension", full, "m.onnx", None, "unsupported_file_type"),
    ]


def test_bad_models_are_refused_and_nothing_is_stored(
    client: TestClient, tenant: TenantAccount, tmp_path: Path, app_settings: Settings
) -> None:
    before = stored_files(app_settings)
    for case, data, filename, spec, code in _bad_model_cases(tmp_path):
        response = upload_model(client, data, filename, spec)
        body = assert_problem(response, 422, code)
        assert body["detail"], case
    assert tenant.counts()["models"] == 0
    assert stored_files(app_settings) == before


def test_key_mismatch_lists_missing_unexpected_and_mismatched(client: TestClient, tmp_path: Path) -> None:
    state = payloads.state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["fc.bias"]
    state["fc.weight"] = torch.zeros(9, 16)
    body = assert_problem(
        upload_model(client, payloads.safetensors_bytes(state, tmp_path)), 422, "invalid_model"
    )
    assert body["details"]["missing"] == ["fc.bias"]
    assert body["details"]["unexpected"] == ["extra.weight"]
    assert body["details"]["mismatched"] == [{"key": "fc.weight", "expected": [4, 16], "found": [9, 16]}]
    assert "fc.bias" in body["detail"]


@pytest.mark.parametrize("builder", [payloads.malicious_pickle, payloads.raw_malicious_pickle])
def test_code_execution_pickle_is_refused_without_running(
    builder, client: TestClient, tenant: TenantAccount, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    data = builder(marker)
    body = assert_problem(upload_model(client, data, "evil.pt"), 422, "invalid_model")
    assert not marker.exists(), "unpickling ran the payload"
    assert "state dict" in body["detail"] or "checkpoint" in body["detail"]
    assert tenant.counts()["models"] == 0


def test_form_problems(client: TestClient, tmp_path: Path) -> None:
    data = payloads.safetensors_bytes(payloads.state_dict(), tmp_path)
    body = assert_problem(client.post("/v1/models", data={"spec": payloads.spec_json()}), 415)
    assert "multipart" in body["detail"]
    response = client.post("/v1/models", files={"file": ("w.safetensors", data)})
    assert "spec" in assert_problem(response, 422, "invalid_spec")["detail"]
    response = client.post("/v1/models", data={"spec": payloads.spec_json()}, files={"other": ("x", b"1")})
    assert "other" in assert_problem(response, 422, "invalid_form")["detail"]
    response = client.post("/v1/models", files={"spec": (None, payloads.spec_json())})
    assert "file" in assert_problem(response, 422, "invalid_form")["detail"]
    truncated = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="w.safetensors"\r\n\r\n' + data[:100]
    )
    response = client.post(
        "/v1/models", content=truncated, headers={"content-type": "multipart/form-data; boundary=XyZ"}
    )
    assert_problem(response, 400, "invalid_form")


def test_content_length_over_the_limit_is_413(client: TestClient, app_settings: Settings) -> None:
    big = b"\0" * (app_settings.max_upload_bytes + (2 << 20))
    response = client.post("/v1/datasets", files={"file": ("d.npz", big)}, headers={"x-test": "oversized"})
    body = assert_problem(response, 413, "payload_too_large")
    assert f"upload limit of {app_settings.max_upload_bytes} bytes" in body["detail"]


# --- datasets -------------------------------------------------------------------------------------------


def test_npz_dataset_is_stored_as_uploaded(client: TestClient, app_settings: Settings) -> None:
    x, y = payloads.images(30, channels=1)
    data = payloads.npz_bytes(x, y)
    response = upload_dataset(client, data, "clean.npz")
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/datasets/{body['id']}"
    assert body["count"] == 30 and body["shape"] == [1, 16, 16]
    assert body["classes"] == [0, 1, 2, 3] and body["class_counts"] == [8, 8, 7, 7]
    assert body["sha256"] == body["upload_sha256"] == hashlib.sha256(data).hexdigest()
    assert body["source_format"] == "npz"
    assert client.get(f"/v1/datasets/{body['id']}").json() == body
    assert [d["id"] for d in client.get("/v1/datasets").json()["items"]] == [body["id"]]


def test_zip_of_class_folders_is_converted_to_npz(client: TestClient, app_settings: Settings) -> None:
    response = upload_dataset(client, payloads.png_zip_bytes(per_class=3), "pets.zip")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["count"] == 6 and body["shape"] == [1, 16, 16]
    assert body["class_names"] == ["cat", "dog"] and body["classes"] == [0, 1]
    assert body["source_format"] == "zip" and body["sha256"] != body["upload_sha256"]
    stored = LocalArtifactStore(app_settings.artifacts_dir).path_of(body["sha256"])
    with np.load(stored, allow_pickle=False) as arrays:
        assert arrays["x"].shape == (6, 16, 16, 1) and arrays["x"].dtype == np.uint8
        assert sorted(arrays["y"].tolist()) == [0, 0, 0, 1, 1, 1]


def _bad_dataset_cases() -> list[tuple[str, bytes, str]]:
    x, y = payloads.images(8)
    objects = io.BytesIO()
    np.savez(objects, x=np.array([{"a": 1}] * 8, dtype=object), y=y)
    no_zip = io.BytesIO()
    with zipfile.ZipFile(no_zip, "w") as archive:
        archive.writestr("readme.txt", "no images")
    return [
        ("zip with ../ paths", payloads.traversal_zip_bytes(), "d.zip"),
        ("negative labels", payloads.npz_bytes(x, y - 5), "d.npz"),
        ("pickled object array", objects.getvalue(), "d.npz"),
        ("float images", payloads.npz_bytes(x.astype(np.float32), y), "d.npz"),
        ("label count differs", payloads.npz_bytes(x, y[:5]), "d.npz"),
        ("missing y", _npz_without_y(x), "d.npz"),
        ("not an archive", b"\x89PNG not really", "d.npz"),
        ("zip without images", no_zip.getvalue(), "d.zip"),
    ]


def _npz_without_y(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=x)
    return buffer.getvalue()


def test_bad_datasets_are_refused_and_nothing_is_stored(
    client: TestClient, tenant: TenantAccount, app_settings: Settings
) -> None:
    before = stored_files(app_settings)
    for case, data, filename in _bad_dataset_cases():
        body = assert_problem(upload_dataset(client, data, filename), 422)
        assert body["code"] == "invalid_dataset", (case, body)
    body = assert_problem(upload_dataset(client, b"x,y\n1,2\n", "d.csv"), 422, "unsupported_file_type")
    assert ".npz" in body["detail"]
    assert tenant.counts()["datasets"] == 0
    assert stored_files(app_settings) == before


def test_traversal_zip_names_the_member(client: TestClient, tmp_path: Path) -> None:
    body = assert_problem(
        upload_dataset(client, payloads.traversal_zip_bytes(), "d.zip"), 422, "invalid_dataset"
    )
    assert ".." in body["detail"]
    assert not (tmp_path.parent / "evil").exists()


# --- deletion -------------------------------------------------------------------------------------------


def test_delete_removes_rows_and_unshared_files(
    client: TestClient, tmp_path: Path, app_settings: Settings
) -> None:
    store = LocalArtifactStore(app_settings.artifacts_dir)
    data = payloads.safetensors_bytes(payloads.state_dict(seed=11), tmp_path)
    first = upload_model(client, data).json()
    second = upload_model(client, data).json()  # same bytes: one stored file, two models
    assert first["sha256"] == second["sha256"] and first["id"] != second["id"]
    assert client.delete(f"/v1/models/{first['id']}").status_code == 204
    assert store.exists(first["sha256"]), "the file is still used by the second model"
    assert client.delete(f"/v1/models/{second['id']}").status_code == 204
    assert not store.exists(second["sha256"])
    assert_problem(client.get(f"/v1/models/{second['id']}"), 404, "not_found")
    assert_problem(client.delete(f"/v1/models/{second['id']}"), 404, "not_found")

    x, y = payloads.images(10, seed=5)
    dataset = upload_dataset(client, payloads.npz_bytes(x, y)).json()
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert not store.exists(dataset["sha256"])
    assert_problem(client.get(f"/v1/datasets/{dataset['id']}"), 404, "not_found")
