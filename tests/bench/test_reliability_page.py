"""`argd bench reliability --suites`: a targeted rerun updates its suites' rows on the published page and
keeps the rest (the other suites, fuzzing and load) from the earlier full run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from argd.bench.cli import main

PUBLISHED = Path(__file__).resolve().parents[2] / "bench" / "results" / "reliability.json"


def test_a_targeted_rerun_updates_only_its_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    earlier = json.loads(PUBLISHED.read_text())
    earlier = {
        **earlier,
        "suites": [r for r in earlier["suites"] if r["file"] != "tests/worker/test_webhook_ssrf.py"],
    }
    (tmp_path / "reliability.json").write_text(json.dumps(earlier))

    assert main(["reliability", "--suites", "test_webhook_ssrf.py", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    result = json.loads((tmp_path / "reliability.json").read_text())
    ssrf = [row for row in result["suites"] if row["file"] == "tests/worker/test_webhook_ssrf.py"]
    assert ssrf and all(row["passed"] == row["cases"] for row in ssrf)
    assert sum(row["cases"] for row in ssrf) >= 16  # one case per forbidden address, and more
    others = [row for row in result["suites"] if row["file"] != "tests/worker/test_webhook_ssrf.py"]
    assert others == earlier["suites"]
    assert result["fuzz"] == earlier["fuzz"] and result["latency"] == earlier["latency"]
    page = (tmp_path / "reliability.md").read_text()
    assert "`test_rebinding_after_the_check_does_not_move_the_connection`" in page
    assert "were rerun on" in page and "--suites test_webhook_ssrf.py" in page
    assert "## Fuzzing" in page and "## Load held" in page


def test_an_unknown_suite_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(PUBLISHED, tmp_path / "reliability.json")
    assert main(["reliability", "--suites", "test_nothing.py", "--out", str(tmp_path)]) == 2
    assert "not a reliability suite: test_nothing.py" in capsys.readouterr().err
    assert main(["reliability", "--suites", "test_webhook_ssrf.py"]) == 2
    assert "--suites needs --out" in capsys.readouterr().err
