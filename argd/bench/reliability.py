"""`argd bench reliability`: the page of figures, `bench/results/reliability.md`, from one command.

It runs, in this order: the reliability test files of the repository under pytest (hostile inputs, access
control, fuzzing, faults, polling), counting each test function's cases and outcomes from pytest's JUnit
report; `argd bench fuzz` at a larger count; and `argd bench api-latency`. The page says what was tried,
how often, and what happened, with the machine and the date. It needs a source checkout (the tests) and
the dev extra.

`--suites FILE ...` reruns only those test files and updates their rows in the page of an earlier full run
(`<out>/reliability.json`), keeping its fuzzing and load figures; the page says which rows were refreshed
when, so a new suite can be added to the page without re-measuring everything on a busy machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from argd.bench.fuzz import fuzz_markdown, run_fuzz
from argd.bench.latency import latency_markdown, run_latency
from argd.bench.stats import machine_info, utc_now

REPO_ROOT = Path(__file__).resolve().parents[2]

# (test file, what it is evidence of): the page's sections, in order.
SUITES = [
    ("tests/api/test_hostile_corpus.py", "Hostile inputs (files, names, JSON), API and argd cleanse"),
    ("tests/api/test_fuzz.py", "schemathesis over the live OpenAPI document (bounded)"),
    ("tests/api/test_access_control.py", "Access control and quotas"),
    ("tests/worker/test_webhooks.py", "Webhook delivery and SSRF"),
    (
        "tests/worker/test_webhook_ssrf.py",
        "Webhook SSRF: names resolving to forbidden addresses, DNS rebinding",
    ),
    ("tests/worker/test_webhook_faults.py", "Faults: the webhook receiver slow, answering 500, or down"),
    ("tests/worker/test_chaos.py", "Faults: seeded SIGKILLs of the pool process and the whole worker"),
    ("tests/worker/test_restarts.py", "Faults: Postgres and Redis restarts, the API killed mid-upload"),
    ("tests/api/test_storage_full.py", "Faults: a full artifact store"),
    ("tests/worker/test_disk_full.py", "Faults: the worker's work disk full"),
    ("tests/api/test_quota_race.py", "Quota race: concurrent uploads against the stored-bytes quota"),
    ("tests/worker/test_jobs_end_to_end.py", "Jobs end to end (SIGKILL mid-epoch, resume)"),
    ("tests/api/test_polling.py", "The polling path (ETag, indexes)"),
    ("tests/cli/test_schema_ready.py", "The embedded default (schema made or `run argd migrate`)"),
]


def run_suites(
    env: dict[str, str], timeout_s: float = 1800, only: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Every suite (or those in `only`) under pytest; per test function: cases, passed, failed, skipped."""
    with tempfile.TemporaryDirectory(prefix="argd-reliability-") as scratch:
        report = Path(scratch) / "junit.xml"
        files = [
            path for path, _ in SUITES if (REPO_ROOT / path).is_file() and (only is None or path in only)
        ]
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
        subprocess.run(
            [*command, *files], cwd=REPO_ROOT, env=env, timeout=timeout_s, check=False, capture_output=True
        )
        if not report.is_file():
            raise RuntimeError("pytest wrote no report: is this a source checkout with the dev extra?")
        tree = ElementTree.parse(report)
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for case in tree.iter("testcase"):
        module = (case.get("classname") or "").replace(".", "/") + ".py"
        function = re.sub(r"\[.*\]$", "", case.get("name") or "")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        counts[(module, function)]["cases"] += 1
        counts[(module, function)][outcome] += 1
    rows = []
    for path, title in SUITES:
        for (module, function), tally in sorted(counts.items()):
            if module == path:
                rows.append({"suite": title, "file": path, "test": function, **tally})
    return rows


def suite_files(names: Sequence[str]) -> list[str]:
    """The suite files named (as paths, or by a file's base name); ValueError naming an unknown one."""
    known = {path: path for path, _ in SUITES} | {Path(path).name: path for path, _ in SUITES}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"not a reliability suite: {', '.join(unknown)}; known: {', '.join(p for p, _ in SUITES)}"
        )
    return [known[name] for name in names]


def merge_suites(
    previous: dict[str, Any], rows: list[dict[str, Any]], files: Sequence[str]
) -> dict[str, Any]:
    """The earlier result with the rows of `files` replaced by `rows`, in the page's suite order."""
    kept = [row for row in previous["suites"] if row["file"] not in files]
    order = {path: index for index, (path, _) in enumerate(SUITES)}
    merged = sorted(kept + rows, key=lambda row: (order.get(row["file"], len(order)), row["test"]))
    return {**previous, "suites": merged}


def refresh_suites(out_dir: Path, names: Sequence[str]) -> dict[str, Any]:
    """Rerun the named suites and update their rows in `<out_dir>/reliability.json` (see the module doc)."""
    source = out_dir / "reliability.json"
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} is missing: run `argd bench reliability --out {out_dir}` once first"
        )
    previous = json.loads(source.read_text())
    files = suite_files(names)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started, started_at = time.monotonic(), utc_now()
    rows = run_suites(env, only=files)
    refresh = {
        "started_at": started_at,
        "files": files,
        "wall_s": round(time.monotonic() - started, 1),
        "machine": machine_info(),
    }
    result = merge_suites(previous, rows, files)
    result["refreshed"] = [*previous.get("refreshed", []), refresh]
    return result


def run_reliability(*, latency_duration_s: float = 10.0, fuzz_examples: int = 50) -> dict[str, Any]:
    started_at = utc_now()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    suites = run_suites(env)
    fuzz = run_fuzz(examples=fuzz_examples)
    latency = run_latency(duration_s=latency_duration_s)
    return {
        "benchmark": "reliability",
        "started_at": started_at,
        "suites": suites,
        "fuzz": fuzz,
        "latency": latency,
        "machine": machine_info(),
    }


def reliability_markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        "# Reliability and security figures",
        "",
        f"Generated by `argd bench reliability --out bench/results` on {result['started_at']}, "
        f"{machine['cpus']} CPUs, load average {machine['load_average']} at the end (the machine is shared "
        "with other work when that figure is above its CPU count).",
        "",
        "## Inputs tried and faults injected (the test suite, counted)",
        "",
        "| area | test | cases | passed | failed | skipped |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in result["suites"]:
        lines.append(
            f"| {row['suite']} | `{row['test']}` | {row['cases']} | {row.get('passed', 0)} "
            f"| {row.get('failed', 0)} | {row.get('skipped', 0)} |"
        )
    total = {key: sum(row.get(key, 0) for row in result["suites"]) for key in ("cases", "passed", "failed")}
    lines += ["", f"In all: {total['cases']} cases, {total['passed']} passed, {total['failed']} failed."]
    for refresh in result.get("refreshed", []):
        names = " ".join(Path(path).name for path in refresh["files"])
        lines += [
            "",
            f"The rows of {', '.join(f'`{path}`' for path in refresh['files'])} were rerun on "
            f"{refresh['started_at']} by `argd bench reliability --suites {names} --out bench/results` "
            f"({refresh['wall_s']} s, load average {refresh['machine']['load_average']}); the rest of the "
            "page, fuzzing and load included, is from the full run above.",
        ]
    lines += [
        "",
        "## Fuzzing",
        "",
        fuzz_markdown(result["fuzz"]),
        "",
        "## Load held",
        "",
        latency_markdown(result["latency"]),
    ]
    return "\n".join(lines)
