"""schemathesis over the live OpenAPI document of a real uvicorn server, with a valid key and with none:
no server error and no answer outside the documented schema, status codes and media types.

Bounded for `make test` (derandomized, so a failure replays; ARGD_FUZZ_EXAMPLES raises the count per
operation); the longer run is `argd bench fuzz`, the same loop (argd.bench.fuzz).
"""

from __future__ import annotations

import os

import pytest

from argd.bench.fuzz import fuzz_operations
from tests.fixtures.server import LiveServer

pytestmark = pytest.mark.service

EXAMPLES = int(os.environ.get("ARGD_FUZZ_EXAMPLES", "25"))


@pytest.mark.parametrize("with_key", [True, False], ids=["key", "no-key"])
def test_fuzzed_requests_get_documented_answers(api_server: LiveServer, with_key: bool) -> None:
    headers = {"Authorization": f"Bearer {api_server.api_key}"} if with_key else {}
    sent = fuzz_operations(api_server.base_url, headers, EXAMPLES)
    assert len(sent) >= 17 and all(count > 0 for count in sent.values()), sent
