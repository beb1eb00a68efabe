"""`argd cleanse` end to end, through the installed console script, on a model with a planted backdoor."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from argd.core.data import load_dataset
from argd.core.metrics import evaluate
from argd.core.spec import ModelSpec
from argd.core.weights import load_model
from tests.cli.conftest import Kit, run_argd


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fractions(phase: dict) -> list[float]:
    return [v for v in phase.values() if v is not None]


def test_cleanse_removes_the_backdoor_and_keeps_accuracy(backdoor_kit: Kit, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # 300 clean images: the default's re-initialised (FST) heads need some 300 steps at batch 16 to relearn
    # the classes, so the schedule is longer than the 3,000-image default's step count would suggest.
    result = run_argd(
        "cleanse",
        "--model",
        backdoor_kit.model,
        *backdoor_kit.spec_flags(),
        *backdoor_kit.data_flags(),
        "--epochs",
        "16",
        "--teacher-epochs",
        "10",
        "--batch-size",
        "16",
        "--lr",
        "0.03",
        "--seed",
        "0",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr

    report = json.loads((out / "report.json").read_text())
    metrics = report["metrics"]
    before, teacher, after = metrics["before"], metrics["teacher"], metrics["after"]
    # The planted backdoor works, and the cleanse removes it while keeping clean accuracy.
    assert before["asr"] >= 0.7, f"the test's backdoor did not take: {before}"
    assert after["asr"] <= 0.2 and after["asr"] <= before["asr"] / 4, metrics
    assert after["acc"] >= before["acc"] - 0.05, metrics
    for phase in (before, teacher, after):
        assert set(phase) == {"acc", "asr", "ra"}
        assert all(0.0 <= v <= 1.0 for v in _fractions(phase)) and len(_fractions(phase)) == 3
    assert metrics["der"] is not None and 0.5 < metrics["der"] <= 1.0
    assert metrics["fidelity"] is not None

    # Every parameter, the seed and the versions are recorded.
    params = report["params"]
    recorded = (params["method"], params["epochs"], params["teacher_epochs"], params["seed"])
    assert recorded == ("argd", 16, 10, 0)
    assert {"lr", "batch_size", "w_node", "w_edge", "w_emb", "beta", "embedding_trainable"} <= set(params)
    assert report["seed"] == 0 and report["target_label"] == backdoor_kit.target
    assert report["spec"]["architecture"] == "small-cnn"
    assert {"argd", "python", "torch", "numpy", "safetensors"} <= set(report["versions"])
    assert report["versions"]["torch"] == torch.__version__

    # Inputs and outputs are identified by their sha256.
    for name, path in {
        "model": backdoor_kit.model,
        "clean": backdoor_kit.clean,
        "test": backdoor_kit.test,
        "poisoned": backdoor_kit.poisoned,
        "spec": backdoor_kit.spec_file,
    }.items():
        assert report["inputs"][name]["sha256"] == _sha256(path), name
    model_file = out / "model.safetensors"
    assert report["outputs"]["model"]["sha256"] == _sha256(model_file)
    assert "/" not in report["inputs"]["model"]["file"]  # names only, never server or user paths

    # The written model is the one measured: reloading it gives the reported ASR.
    spec = ModelSpec.model_validate(backdoor_kit.spec)
    cleansed = load_model(model_file, spec)
    poisoned = load_dataset(backdoor_kit.poisoned)
    again = evaluate(cleansed, spec, "cpu", poisoned=poisoned, target_label=backdoor_kit.target)
    assert abs(again["asr"] - after["asr"]) < 1e-6

    # Not a terminal: a summary on stdout, no progress bar on stderr.
    assert "ACC" in result.stdout and "after" in result.stdout
    assert "\r" not in result.stderr


def test_cleanse_takes_a_params_file_and_quiet_prints_nothing(tiny_kit: Kit, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"epochs": 1, "teacher_epochs": 1, "w_edge": 7.5, "batch_size": 16}))
    out = tmp_path / "out"
    result = run_argd(
        "cleanse",
        "--model",
        tiny_kit.model,
        *tiny_kit.spec_flags(),
        "--clean",
        tiny_kit.clean,
        "--params",
        params,
        "--method",
        "nad",
        "--quiet",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    report = json.loads((out / "report.json").read_text())
    # File values and flags both land in the effective parameters; the flag wins for the method.
    assert report["params"]["w_edge"] == 7.5 and report["params"]["batch_size"] == 16
    assert report["method"] == "nad" and report["params"]["epochs"] == 1
    # Without test or poisoned data nothing can be measured, and the report says so with nulls.
    assert report["metrics"]["after"] == {"acc": None, "asr": None, "ra": None}
    assert set(report["inputs"]) == {"model", "clean", "params", "spec"}


def test_cleanse_reference_preset_and_json_output(tiny_kit: Kit, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_argd(
        "cleanse",
        "--model",
        tiny_kit.model,
        "--architecture",
        "small-cnn",
        "--num-classes",
        "10",
        "--in-channels",
        "1",
        "--image-size",
        "16",
        "--mean",
        "0.5",
        "--std",
        "0.25",
        "--clean",
        tiny_kit.clean,
        "--preset",
        "reference",
        "--epochs",
        "1",
        "--teacher-epochs",
        "1",
        "--json",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads((out / "report.json").read_text())
    assert printed["preset"] == "reference"
    # The reference preset's settings, with the flags applied on top.
    assert printed["params"]["lr"] == 0.1 and printed["params"]["embedding_trainable"] is False
    assert printed["params"]["epochs"] == 1
