"""`argd bench job-speed`: the same cleanse as a service job and as a one-shot `argd cleanse`, side by side.

One synthetic image set and one untrained model (speed does not depend on a backdoor) are cleansed in
alternating rounds: `argd cleanse` in a child process, then a job on the embedded service (`argd serve`:
SQLite, folder queue, one worker process, the same environment). Reported per side: the wall time a user
waits (the CLI process from start to exit; the job from submission to `succeeded`), the engine's own
seconds from the report, and the torch threads the work ran on; the ratio service / CLI is the figure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from argd.bench.stats import machine_info, utc_now

GOAL_RATIO = 1.05


def _inputs(root: Path, *, images: int, architecture: str, seed: int) -> dict[str, Path]:
    """Model, spec, clean subset and test set files for the runs (made once, shared by both sides)."""
    from argd.cli.demo import synthetic_images
    from argd.core.architectures import build_model
    from argd.core.data import save_npz
    from argd.core.spec import ModelSpec
    from argd.core.weights import save_weights

    spec = ModelSpec(
        architecture=architecture, num_classes=10, in_channels=1, image_size=28, mean=[0.5], std=[0.25]
    )
    paths = {name: root / f"{name}.{ext}" for name, ext in
             (("model", "safetensors"), ("spec", "json"), ("clean", "npz"), ("test", "npz"))}  # fmt: skip
    import torch

    torch.manual_seed(seed)
    save_weights(build_model(spec), paths["model"])
    paths["spec"].write_text(spec.model_dump_json())
    save_npz(synthetic_images(images, seed=seed), paths["clean"])
    save_npz(synthetic_images(max(images // 3, 100), seed=seed + 1), paths["test"])
    return paths


def _cli_run(paths: dict[str, Path], params: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "argd.cli", "cleanse", "--model", str(paths["model"]), "--spec",
        str(paths["spec"]), "--clean", str(paths["clean"]), "--test", str(paths["test"]), "--params",
        str(params), "--out", str(out), "--quiet",
    ]  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"argd cleanse failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": wall, "engine_s": report["seconds"]}


def _service_run(client: Any, uploads: dict[str, str], params: dict[str, Any]) -> dict[str, Any]:
    began = time.perf_counter()
    job = client.create_job(
        uploads["model"], uploads["clean"], test_dataset_id=uploads["test"], params=params
    )
    job = client.wait(job["id"], poll_interval=0.2, timeout=7200)
    wall = time.perf_counter() - began
    if job["status"] != "succeeded":
        raise RuntimeError(f"the service job ended {job['status']}: {job.get('error')}")
    report = client.report(job["id"])
    return {"wall_s": wall, "engine_s": report["seconds"], "torch_threads": report.get("torch_threads")}


def run_job_speed(
    *,
    images: int = 3000,
    epochs: int = 2,
    teacher_epochs: int = 2,
    rounds: int = 2,
    architecture: str = "wrn-16-1",
    method: str = "argd",
    seed: int = 0,
) -> dict[str, Any]:
    """Alternate CLI and service runs of the same cleanse `rounds` times; medians and their ratios."""
    from argd.cli.demo import EmbeddedService
    from argd.client import ArgdClient

    if not 1 <= rounds <= 20 or not 100 <= images <= 100_000 or not 1 <= epochs <= 100:
        raise ValueError("rounds 1..20, images 100..100000, epochs 1..100")
    params = {"method": method, "epochs": epochs, "teacher_epochs": teacher_epochs, "seed": seed}
    started_at = utc_now()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGD_")}
    with tempfile.TemporaryDirectory(prefix="argd-bench-job-speed-") as scratch_dir:
        scratch = Path(scratch_dir)
        paths = _inputs(scratch, images=images, architecture=architecture, seed=seed)
        params_file = scratch / "params.json"
        params_file.write_text(json.dumps(params))
        cli_runs, service_runs = [], []
        with (
            EmbeddedService(scratch / "service") as service,
            ArgdClient(service.url, service.api_key) as client,
        ):
            uploads = {
                "model": client.upload_model(paths["model"], json.loads(paths["spec"].read_text()))["id"],
                "clean": client.upload_dataset(paths["clean"])["id"],
                "test": client.upload_dataset(paths["test"])["id"],
            }
            for index in range(rounds):
                cli_runs.append(_cli_run(paths, params_file, scratch / f"cli-{index}", env))
                service_runs.append(_service_run(client, uploads, params))
    sides = {"cli": cli_runs, "service": service_runs}
    medians = {
        side: {key: statistics.median(run[key] for run in runs) for key in ("wall_s", "engine_s")}
        for side, runs in sides.items()
    }
    ratio = {key: medians["service"][key] / medians["cli"][key] for key in ("wall_s", "engine_s")}
    return {
        "benchmark": "job-speed",
        "started_at": started_at,
        "images": images,
        "params": params,
        "architecture": architecture,
        "rounds": rounds,
        "runs": sides,
        "median": medians,
        "ratio_service_over_cli": ratio,
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio["engine_s"] <= GOAL_RATIO,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": machine_info(),
    }


def job_speed_markdown(result: dict[str, Any]) -> str:
    med, ratio = result["median"], result["ratio_service_over_cli"]
    threads = {run.get("torch_threads") for run in result["runs"]["service"]}
    return "\n".join(
        [
            f"{result['architecture']}, {result['images']} images, {result['params']}, "
            f"{result['rounds']} alternating rounds, {result['machine']['cpus']} CPUs "
            f"(load average before: {result['machine']['load_average']}); service worker's torch threads: "
            f"{', '.join(str(t) for t in sorted(threads, key=str))}",
            "",
            "| side | wall s (median) | engine s (median) |",
            "|---|---:|---:|",
            f"| argd cleanse | {med['cli']['wall_s']:.1f} | {med['cli']['engine_s']:.1f} |",
            f"| service job | {med['service']['wall_s']:.1f} | {med['service']['engine_s']:.1f} |",
            f"| service / CLI | {ratio['wall_s']:.3f} | {ratio['engine_s']:.3f} |",
            "",
            f"Goal: the service's engine time within {GOAL_RATIO - 1:.0%} of the CLI's: "
            f"{'met' if result['goal_met'] else 'missed'}.",
        ]
    )
