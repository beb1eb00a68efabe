"""Command-line test setup: the installed `argd` script, and model/data files the commands run on.

`backdoor_kit` plants a real backdoor (BadNets corner trigger, synthetic textures, small-cnn) once per
session with the same helpers `argd demo` uses; `tiny_kit` is an untrained 16-pixel model with a few
images, for tests where only the plumbing matters. Service fixtures (Postgres, Redis, a live API server,
a worker) come from tests.fixtures and are only started by the tests that ask for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.fixtures.database import *  # noqa: F403
from tests.fixtures.server import *  # noqa: F403
from tests.fixtures.worker import *  # noqa: F403

ARGD = Path(sys.executable).with_name("argd")
TARGET = 0


@dataclass
class Kit:
    """Files for one cleanse: weights, spec JSON, clean subset, clean test set, triggered test set."""

    root: Path
    spec: dict
    model: Path
    spec_file: Path
    clean: Path
    test: Path
    poisoned: Path
    target: int = TARGET

    def spec_flags(self) -> list[str]:
        return ["--spec", str(self.spec_file)]

    def data_flags(self) -> list[str]:
        return [
            "--clean",
            str(self.clean),
            "--test",
            str(self.test),
            "--poisoned",
            str(self.poisoned),
            "--target-label",
            str(self.target),
        ]


def argd_env(**extra: str) -> dict[str, str]:
    """The environment of an `argd` child: one torch thread, no client settings leaking from the shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("ARGD_URL", "ARGD_API_KEY", "ARGD_DEBUG")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_argd(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (not the module): what a user or a pipeline step runs."""
    assert ARGD.is_file(), f"the argd console script is not installed beside {sys.executable}"
    return subprocess.run(
        [str(ARGD), *map(str, args)],
        env=env if env is not None else argd_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def _write_kit(root: Path, spec, model, clean, test, poisoned) -> Kit:
    from argd.core.data import save_npz
    from argd.core.weights import save_weights

    root.mkdir(parents=True, exist_ok=True)
    kit = Kit(
        root=root,
        spec=spec.model_dump(mode="json"),
        model=root / "backdoored.safetensors",
        spec_file=root / "spec.json",
        clean=root / "clean.npz",
        test=root / "test.npz",
        poisoned=root / "poisoned.npz",
    )
    save_weights(model, kit.model)
    kit.spec_file.write_text(json.dumps(kit.spec))
    save_npz(clean, kit.clean)
    save_npz(test, kit.test)
    save_npz(poisoned, kit.poisoned)
    return kit


#: The backdoor of the end-to-end test: trained without crop so the trigger sits still and takes
#: reliably in a dozen short epochs.
BACKDOOR_CONFIG = dict(
    source="synthetic",
    architecture="small-cnn",
    backdoor_flip=False,
    train_size=1500,
    test_size=400,
    clean_size=300,
    backdoor_epochs=12,
    backdoor_crop=0,
    poison_rate=0.15,
    target=TARGET,
    seed=1,
)


@pytest.fixture(scope="session")
def backdoor_kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """A small-cnn with a planted BadNets backdoor on 28-pixel synthetic textures, and its data files."""
    from argd.cli.demo import DemoConfig, demo_inputs
    from argd.core.weights import load_model

    root = tmp_path_factory.mktemp("backdoor-kit")
    inputs = demo_inputs(DemoConfig(**BACKDOOR_CONFIG), root / "cache", quiet=True)
    model = load_model(inputs.model_path, inputs.spec)
    return _write_kit(root, inputs.spec, model, inputs.clean, inputs.test, inputs.poisoned_test)


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """An untrained 16-pixel small-cnn and 48 images per set: for plumbing, not for metrics."""
    from argd.cli.demo import synthetic_images
    from argd.core.architectures import build_model
    from argd.core.attacks import make_attack
    from argd.core.spec import ModelSpec

    spec = ModelSpec(
        architecture="small-cnn", num_classes=10, in_channels=1, image_size=16, mean=[0.5], std=[0.25]
    )
    torch.manual_seed(0)
    model = build_model(spec).eval()
    clean = synthetic_images(48, image_size=16, seed=3)
    test = synthetic_images(48, image_size=16, seed=4)
    poisoned = make_attack("badnets", target=TARGET).poison_eval(test)
    return _write_kit(tmp_path_factory.mktemp("tiny-kit"), spec, model, clean, test, poisoned)
