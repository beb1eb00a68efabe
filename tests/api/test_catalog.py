"""`GET /v1/architectures` and `GET /v1/presets`: the registry and the presets as the engine has them."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from argd.core.architectures import ARCHITECTURES
from argd.core.params import PRESETS, CleanseParams
from tests.api.test_problems import assert_problem

pytestmark = pytest.mark.service


def test_architectures_are_the_registry(client: TestClient, anonymous: TestClient) -> None:
    assert_problem(anonymous.get("/v1/architectures"), 401, "unauthorized")
    items = client.get("/v1/architectures").json()["items"]
    assert [item["id"] for item in items] == list(ARCHITECTURES)
    small = next(item for item in items if item["id"] == "small-cnn")
    assert small["arch_kwargs"] == [
        {"name": "width", "type": "int", "help": ARCHITECTURES["small-cnn"].kwargs["width"].help}
    ]
    assert small["feature_layers"] == ["stage1", "stage2", "stage3"]
    vgg = next(item for item in items if item["id"] == "vgg11-bn")
    assert vgg["feature_layers"] is None and {k["name"] for k in vgg["arch_kwargs"]} == {
        "small_input",
        "hidden",
        "dropout",
    }


def test_presets_are_complete_and_valid(client: TestClient, anonymous: TestClient) -> None:
    assert_problem(anonymous.get("/v1/presets"), 401, "unauthorized")
    items = client.get("/v1/presets").json()["items"]
    assert [item["name"] for item in items] == list(PRESETS)
    for item in items:
        assert item["params"] == CleanseParams.preset(item["name"]).model_dump(mode="json")
        assert item["description"]
    reference = next(item for item in items if item["name"] == "reference")["params"]
    assert reference["lr"] == 0.1 and reference["teacher"] == "finetune"
