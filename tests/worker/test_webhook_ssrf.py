"""Webhook SSRF at delivery: names that resolve to forbidden addresses, and DNS rebinding.

DNS is not the component under test, so a name's answers come from a resolver function passed to the
delivery (the seam `post_signed(..., resolver=)`); everything after it is real: the policy check, httpcore's
connection through the guarded backend, and real sockets on loopback. A listening socket that must never be
reached (a tripwire) proves that a refused address got no connection at all, not only no request.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence

import pytest

from argd.jobs.webhooks import WebhookUrlError, check_address, tenant_webhook_secret
from argd.persistence.settings import Settings
from argd.worker.webhooks import AttemptResult, ConnectionRefusedByPolicy, GuardedBackend, post_signed
from tests.fixtures.receiver import Answer, receiving

STRICT = Settings(webhook_secret="whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ=")
LOOPBACK_OK = Settings(webhook_allow_http_loopback=True)
SECRET = tenant_webhook_secret(STRICT, "t")


class Tripwire:
    """A listening TCP socket on loopback that records whether anything connected to it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    def connections(self) -> int:
        count = 0
        while True:
            try:
                peer, _ = self.sock.accept()
            except BlockingIOError:
                return count
            peer.close()
            count += 1


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.sock.close()


class ScriptedDns:
    """Answers a name with `answers[n]` on the n-th look-up (the last repeats), as a rebinding DNS would."""

    def __init__(self, *answers: Sequence[str]):
        self.answers = answers
        self.lookups: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append((host, port))
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


def _post(url: str, settings: Settings, resolver: ScriptedDns) -> AttemptResult:
    return post_signed(url, b"{}", message_id="msg_s", secret=SECRET, settings=settings, resolver=resolver)


FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private or reserved"),
    ("172.16.5.4", "private or reserved"),
    ("172.31.255.254", "private or reserved"),
    ("192.168.0.10", "private or reserved"),
    ("::ffff:10.0.0.1", "private or reserved"),
    ("169.254.169.254", "private or reserved"),
    ("fe80::1", "private or reserved"),
    ("fe80::1%eth0", "private or reserved"),
    ("fd00::2", "private or reserved"),
    ("0.0.0.0", "private or reserved"),
    ("::", "private or reserved"),
    ("100.64.0.1", "private or reserved"),
]


@pytest.mark.parametrize(("address", "reason"), FORBIDDEN)
def test_a_name_that_resolves_to_a_forbidden_address_is_refused(
    tripwire: Tripwire, address: str, reason: str
) -> None:
    dns = ScriptedDns([address])
    result = _post(f"https://hooks.example.com:{tripwire.port}/h", STRICT, dns)
    assert not result.ok and not result.retryable and result.status_code is None
    assert result.error is not None
    assert "hooks.example.com resolves to" in result.error and reason in result.error
    assert dns.lookups == [("hooks.example.com", tripwire.port)]
    assert tripwire.connections() == 0  # 127.x and ::ffff:127.0.0.1 would have reached it


def test_one_forbidden_address_among_public_ones_refuses_the_name(tripwire: Tripwire) -> None:
    dns = ScriptedDns(["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "127.0.0.1"])
    result = _post(f"https://hooks.example.com:{tripwire.port}/h", STRICT, dns)
    assert not result.ok and not result.retryable
    assert result.error is not None and "resolves to 127.0.0.1 is a loopback address" in result.error
    assert tripwire.connections() == 0


def test_a_name_that_does_not_resolve_is_retried_later() -> None:
    def no_such_name(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    result = post_signed(
        "https://gone.example.com/h",
        b"{}",
        message_id="m",
        secret=SECRET,
        settings=STRICT,
        resolver=no_such_name,
    )
    assert not result.ok and result.retryable and result.error is not None
    assert "does not resolve" in result.error


def test_the_connection_refuses_forbidden_addresses_by_itself(tripwire: Tripwire) -> None:
    """Connect time: the HTTP stack's socket layer applies the policy, whatever handed it the address."""
    with pytest.raises(ConnectionRefusedByPolicy, match="loopback"):
        GuardedBackend(STRICT).connect_tcp("127.0.0.1", tripwire.port, timeout=2)
    with pytest.raises(ConnectionRefusedByPolicy, match="loopback"):
        GuardedBackend(STRICT).connect_tcp("::ffff:127.0.0.1", tripwire.port, timeout=2)
    with pytest.raises(ConnectionRefusedByPolicy, match="not a checked address"):
        GuardedBackend(LOOPBACK_OK).connect_tcp("localhost", tripwire.port, timeout=2)  # a name: never
    assert tripwire.connections() == 0
    GuardedBackend(LOOPBACK_OK).connect_tcp("127.0.0.1", tripwire.port, timeout=2).close()
    assert tripwire.connections() == 1  # the same connection, allowed by the settings, is made
    for address, _ in FORBIDDEN:
        with pytest.raises(WebhookUrlError):
            check_address(address, STRICT)
    assert str(check_address("93.184.215.14", STRICT)) == "93.184.215.14"


def test_rebinding_after_the_check_does_not_move_the_connection() -> None:
    """The name is checked at 127.0.0.1 (allowed by these settings) and then rebinds to a private address:
    the request still goes to the checked address, with the name in the Host header, and the name is
    looked up once, so nothing after the check can see the new answer."""
    with receiving([Answer(204)]) as receiver:
        dns = ScriptedDns(["127.0.0.1"], ["10.0.0.1"])
        url = f"http://rebind.localhost:{receiver.port}/hooks"
        result = _post(url, LOOPBACK_OK, dns)
        requests = list(receiver.requests)
    assert result.ok and result.status_code == 204
    assert dns.lookups == [("rebind.localhost", receiver.port)]
    (request,) = requests
    assert request.headers["host"] == f"rebind.localhost:{receiver.port}"


def test_a_name_checked_allowed_then_rebound_private_is_refused_at_the_next_delivery() -> None:
    """Allowed when the first delivery checks it (the receiver answers 500), private at the retry: the retry
    resolves and checks again, and sends nothing."""
    with receiving([Answer(500)]) as receiver:
        dns = ScriptedDns(["127.0.0.1"], ["192.168.7.7", "127.0.0.1"])
        url = f"http://rebind.localhost:{receiver.port}/hooks"
        first = _post(url, LOOPBACK_OK, dns)
        second = _post(url, LOOPBACK_OK, dns)
        received = len(receiver.requests)
    assert first.status_code == 500 and first.retryable
    assert not second.ok and not second.retryable and second.status_code is None
    assert second.error is not None
    assert "rebind.localhost resolves to 192.168.7.7 is in a private or reserved range" in second.error
    assert len(dns.lookups) == 2 and received == 1  # only the first delivery reached the receiver
