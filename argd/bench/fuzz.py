"""`argd bench fuzz`: schemathesis over the live OpenAPI document, with a valid key and with none.

Every operation of the document gets `examples` generated requests (derandomized, so a run replays),
each checked for: no server error, a documented status code and media type, and a body that matches the
documented schema. The test suite runs the same loop at a small count (tests/api/test_fuzz.py). Needs the
dev extra (schemathesis).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from argd.bench.apiserver import DEFAULT_ADMIN_URL, api_server, server_env
from argd.bench.stats import machine_info, utc_now
from argd.persistence import keys
from argd.persistence.db import dispose_engines, session_scope
from argd.persistence.settings import Settings
from argd.persistence.throwaway import throwaway_database

CHECK_NAMES = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]


def fuzz_operations(base_url: str, headers: dict[str, str], examples: int) -> dict[str, int]:
    """Cases sent per operation; the first failing check raises with the case to replay (curl line)."""
    import schemathesis
    from schemathesis.core.result import Ok

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            raise RuntimeError(
                f"the OpenAPI document has an operation schemathesis cannot use: {result.err()}"
            )
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        sent[label] = 0
        _fuzz_one(operation, base_url, headers, examples, sent, label)
    return sent


def _fuzz_one(
    operation: Any, base_url: str, headers: dict[str, str], examples: int, sent: dict[str, int], label: str
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        schemathesis.checks.not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Any) -> None:
        sent[label] += 1
        if not headers and case.headers:
            # "Without a key" means no Authorization at all: schemathesis would otherwise generate one
            # from the security scheme, and those invalid keys would (rightly) get the client throttled.
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        case.call_and_validate(base_url=base_url, headers=headers, checks=checks)

    one()


def run_fuzz(*, examples: int = 100, admin_url: str = DEFAULT_ADMIN_URL) -> dict[str, Any]:
    """Both runs against a fresh server on a throw-away Postgres; raises on the first failure."""
    if not 1 <= examples <= 100_000:
        raise ValueError("examples must be between 1 and 100000")
    started_at, began = utc_now(), time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="argd-bench-fuzz-") as scratch,
        throwaway_database(admin_url, "argd_fuzz") as url,
    ):
        settings = Settings(database_url=url, data_dir=Path(scratch) / "data")
        with session_scope(settings) as session:
            key = keys.create_key(session, "fuzz", settings)
        dispose_engines()
        with api_server(server_env(settings), Path(scratch) / "api-server.log") as server:
            runs = {
                "with_key": fuzz_operations(server.base_url, {"Authorization": f"Bearer {key}"}, examples),
                "without_key": fuzz_operations(server.base_url, {}, examples),
            }
    return {
        "benchmark": "fuzz",
        "started_at": started_at,
        "examples_per_operation": examples,
        "operations": len(runs["with_key"]),
        "cases": {name: sum(sent.values()) for name, sent in runs.items()},
        "per_operation": runs,
        "failures": 0,
        "checks": CHECK_NAMES,
        "seconds": time.perf_counter() - began,
        "machine": machine_info(),
    }


def fuzz_markdown(result: dict[str, Any]) -> str:
    cases = result["cases"]
    return (
        f"schemathesis over {result['operations']} operations, up to {result['examples_per_operation']} "
        f"cases each: {cases['with_key']} cases with a valid key, {cases['without_key']} without; "
        f"{result['failures']} failures of {', '.join(result['checks'])} ({result['seconds']:.0f} s)."
    )
