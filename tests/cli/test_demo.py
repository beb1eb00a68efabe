"""`argd demo` on tiny settings: the embedded service (`argd serve` with SQLite, the folder queue and its
worker child) runs both jobs through the REST API, and the printed table matches the downloaded file."""

from __future__ import annotations

import json
import re
from pathlib import Path

from argd.cli.demo import SHIPPED_MODEL, DemoConfig, _shipped_matches, demo_spec
from argd.core.weights import load_model
from tests.cli.conftest import argd_env, run_argd


def _row(stdout: str, label: str) -> tuple[str, str]:
    match = re.search(rf"^{re.escape(label)}\s+(\S+ %)\s+(\S+ %)(?:\s+\d+ s)?$", stdout, re.MULTILINE)
    assert match, f"no row {label!r} in:\n{stdout}"
    return match.group(1), match.group(2)


def test_demo_runs_end_to_end_on_the_embedded_service(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    result = run_argd(
        "demo",
        "--synthetic",
        "--train-size",
        "500",
        "--clean-size",
        "150",
        "--test-size",
        "150",
        "--backdoor-epochs",
        "2",
        "--epochs",
        "1",
        "--teacher-epochs",
        "1",
        "--data-dir",
        data_dir,
        env=argd_env(ARGD_TORCH_THREADS="1", ARGD_DATABASE_URL="postgresql://must-not-be-used/x"),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "using synthetic images (--synthetic)" in result.stderr
    assert "Backdoor removal on synthetic: small-cnn, BadNets, target 0" in result.stdout
    for label in ("backdoored model (before)", "FST (baseline)", "ARGD (cleansed)"):
        _row(result.stdout, label)
    # What the service reported is what the user downloaded.
    assert _row(result.stdout, "ARGD (cleansed)") == _row(result.stdout, "ARGD, downloaded file")

    output = data_dir / "output"
    report = json.loads((output / "report.json").read_text())
    assert report["method"] == "argd" and report["params"]["epochs"] == 1
    assert (output / "model.safetensors").stat().st_size > 0
    cached = list((data_dir / "cache").glob("backdoored-small-cnn-*.safetensors"))
    assert len(cached) == 1

    # A second run reuses the cached backdoored model instead of training it again.
    again = run_argd(
        "demo", "--synthetic", "--train-size", "500", "--clean-size", "150", "--test-size", "150",
        "--backdoor-epochs", "2", "--epochs", "1", "--teacher-epochs", "1", "--no-baseline",
        "--data-dir", data_dir, env=argd_env(ARGD_TORCH_THREADS="1"), timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reusing the cached backdoored model" in again.stderr
    assert "FST (baseline)" not in again.stdout


def test_remake_model_writes_the_backdoored_model_with_its_settings(tmp_path: Path) -> None:
    """`argd demo --remake-model PATH`, how the shipped model is made: trains, writes PATH, no service."""
    from safetensors import safe_open

    path = tmp_path / "assets" / "model.safetensors"
    result = run_argd(
        "demo", "--synthetic", "--train-size", "300", "--test-size", "50", "--clean-size", "50",
        "--backdoor-epochs", "1", "--remake-model", path, "--data-dir", tmp_path / "demo",
        env=argd_env(ARGD_TORCH_THREADS="1"), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote {path}" in result.stderr and "starting the embedded service" not in result.stderr
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        names = set(f.keys())
    assert "fc.weight" in names  # the small CNN of synthetic runs
    made_with = json.loads(metadata["demo_config"])
    assert made_with["architecture"] == "small-cnn" and made_with["train_size"] == 300
    assert metadata["source"] == "synthetic"


def test_the_shipped_model_is_the_default_demo_model() -> None:
    """`make demo` starts at once only while the shipped file matches the demo's default settings."""
    assert SHIPPED_MODEL.is_file(), "remake it: argd demo --remake-model " + str(SHIPPED_MODEL)
    assert _shipped_matches(DemoConfig(), "fashion-mnist")
    assert not _shipped_matches(DemoConfig(backdoor_epochs=3), "fashion-mnist")
    assert not _shipped_matches(DemoConfig(), "synthetic")
    model = load_model(SHIPPED_MODEL, demo_spec(DemoConfig()))
    assert sum(p.numel() for p in model.parameters()) == 174_778
