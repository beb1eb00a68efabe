"""Operator commands: `serve` (API, plus one worker by default), `worker`, `migrate` and `keys`.

All of them read the same `ARGD_*` settings, so the embedded default (no variables: SQLite, folder broker,
one data directory) and a production deployment (Postgres, Redis) run the same code.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from typing import Any

from argd.cli.common import EXIT_FAILURE, EXIT_OK, ArgumentParser, CliError, info, print_json

WORKER_STOP_TIMEOUT_S = 30.0


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    """Add `serve`, `worker`, `migrate` and `keys` to the command tree."""
    p = commands.add_parser(
        "serve",
        help="run the REST API (and, by default, one worker process)",
        description="Run the API with uvicorn. Unless --no-worker, also start one worker process that runs "
        "the jobs, and bring the database schema up to date first (unless --no-migrate). With no ARGD_* "
        "settings everything lives in ./argd-data: a SQLite file, the artifact store, a folder queue.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    p.add_argument("--no-worker", action="store_true", help="API only (workers run elsewhere)")
    p.add_argument("--no-migrate", action="store_true", help="do not upgrade the schema at start")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)

    w = commands.add_parser(
        "worker",
        help="run a worker that executes cleanse jobs from the queue",
        description="Consume jobs from the queue (ARGD_QUEUE) and run them on ARGD_DEVICE. Run one worker "
        "process per GPU.",
    )
    w.add_argument("--concurrency", type=int, help="jobs at once (default: ARGD_WORKER_CONCURRENCY)")
    w.add_argument("--queue", help="queue to consume (default: ARGD_QUEUE)")
    w.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    w.set_defaults(func=cmd_worker)

    m = commands.add_parser(
        "migrate",
        help="bring the database schema up to date",
        description="Apply the database migrations (ARGD_DATABASE_URL, or the SQLite file in ARGD_DATA_DIR).",
    )
    m.add_argument("--revision", default="head", help="target revision (default: %(default)s)")
    m.add_argument(
        "--check", action="store_true", help="only report whether the schema is current (exit 1 if not)"
    )
    m.set_defaults(func=cmd_migrate)

    k = commands.add_parser("keys", help="create, list and revoke API keys", description="Manage API keys.")
    key_commands = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    kc = key_commands.add_parser("create", help="create a key for a tenant (printed once, stored hashed)")
    kc.add_argument("--tenant", "--name", dest="tenant", required=True, help="tenant name (created if new)")
    kc.set_defaults(func=cmd_keys_create)
    kl = key_commands.add_parser("list", help="list keys by prefix (never their secret part)")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(func=cmd_keys_list)
    kr = key_commands.add_parser("revoke", help="revoke the key(s) with this displayed prefix")
    kr.add_argument("prefix", help="the prefix shown by 'argd keys list' (e.g. argd_AbCdEfGh)")
    kr.set_defaults(func=cmd_keys_revoke)

    q = commands.add_parser(
        "quota",
        help="show or set a tenant's quotas",
        description="Print a tenant's quotas as JSON, after changing the ones given. A value is a whole "
        "number, or 'none' to lift the limit. Past a quota the API answers 413 (stored bytes, job epochs) "
        "or 429 (active jobs) naming it.",
    )
    q.add_argument("--tenant", required=True, help="tenant name (as in 'argd keys create --tenant')")
    for flag, what in (
        ("--max-stored-bytes", "bytes of models and datasets stored"),
        ("--max-active-jobs", "queued and running jobs at once"),
        ("--max-job-epochs", "teacher plus student epochs of one job"),
    ):
        q.add_argument(flag, type=_quota_value, default=argparse.SUPPRESS, help=what)
    q.set_defaults(func=cmd_quota)


# --------------------------------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    """Migrate (embedded default), start the worker child, run uvicorn in the foreground, stop the child."""
    import uvicorn

    settings = _settings()
    settings.ensure_dirs()
    if args.no_migrate:
        _check_schema(settings)
    else:
        _upgrade(settings)
    from argd.api.app import create_app

    app = create_app(settings)
    worker = None if args.no_worker else start_worker_process(args.log_level)
    info(
        f"argd serve: http://{args.host}:{args.port} (data in {settings.data_dir}, "
        f"{'no worker' if worker is None else f'worker pid {worker.pid}'})"
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        if worker is not None:
            stop_process(worker)
    return EXIT_OK


def start_worker_process(log_level: str = "info") -> subprocess.Popen[bytes]:
    """`argd worker` as a child process with the same environment; a thread reports if it dies early."""
    command = [sys.executable, "-m", "argd.cli", "worker", "--log-level", log_level]
    die_with_parent = _die_with_parent if sys.platform == "linux" else None
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def watch() -> None:
        code = process.wait()
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):
            info(f"argd serve: the worker process exited with code {code}; jobs will wait in the queue")

    threading.Thread(target=watch, name="argd-worker-watch", daemon=True).start()
    return process


def _die_with_parent() -> None:
    """In the worker child, before exec: SIGTERM it if `argd serve` dies, even by SIGKILL (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_process(process: subprocess.Popen[Any], timeout: float = WORKER_STOP_TIMEOUT_S) -> None:
    """SIGTERM (a worker finishes or checkpoints its job), then SIGKILL after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -------------------------------------------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    settings = _settings()
    overrides: dict[str, Any] = {}
    if args.concurrency is not None:
        if not 1 <= args.concurrency <= 64:
            raise CliError("--concurrency must be between 1 and 64")
        overrides["worker_concurrency"] = args.concurrency
    if args.queue is not None:
        if not args.queue.strip():
            raise CliError("--queue must not be empty")
        overrides["queue"] = args.queue.strip()
    if overrides:
        settings = settings.model_copy(update=overrides)
    settings.ensure_dirs()
    _ready_schema(settings)
    from argd.worker.main import run_worker

    run_worker(settings, loglevel=args.log_level.upper())
    return EXIT_OK


# ------------------------------------------------------------------------------------------------- migrate


def cmd_migrate(args: argparse.Namespace) -> int:
    from argd.persistence import migrate

    settings = _settings()
    if args.check:
        current, head = migrate.current_revision(settings), migrate.head_revision()
        print(f"database at {current or 'nothing (empty)'}; newest is {head}")
        return EXIT_OK if current == head else EXIT_FAILURE
    _upgrade(settings, args.revision)
    print(f"database at {migrate.current_revision(settings)} ({_safe_url(settings.database_url)})")
    return EXIT_OK


def _ready_schema(settings: Any) -> None:
    """Before a command uses the database: the embedded SQLite file is created or upgraded here; any other
    database that is behind stops the command with exit 2 and `run argd migrate`."""
    from argd.persistence import migrate

    if migrate.is_embedded(settings):
        settings.ensure_dirs()
        _upgrade(settings)
    else:
        _check_schema(settings)


def _check_schema(settings: Any) -> None:
    """Exit 2 with `run argd migrate` unless the schema is at the newest revision (nothing is changed)."""
    from argd.persistence import migrate

    try:
        current, head = migrate.current_revision(settings), migrate.head_revision()
    except Exception as exc:
        raise CliError(
            f"cannot read the schema of {_safe_url(settings.database_url)}: {type(exc).__name__}: {exc}",
            EXIT_FAILURE,
        ) from exc
    if current != head:
        raise CliError(str(migrate.SchemaNotReady(_safe_url(settings.database_url), current, head)))


def _upgrade(settings: Any, revision: str = "head") -> None:
    from argd.persistence import migrate

    try:
        migrate.upgrade(settings, revision)
    except Exception as exc:
        raise CliError(
            f"cannot migrate {_safe_url(settings.database_url)}: {type(exc).__name__}: {exc}", EXIT_FAILURE
        ) from exc


# ---------------------------------------------------------------------------------------------------- keys


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Print the new key alone on stdout (so `KEY=$(argd keys create --tenant ci)` works)."""
    from argd.persistence.db import session_scope
    from argd.persistence.keys import create_key

    settings = _settings()
    _ready_schema(settings)
    try:
        with session_scope(settings) as session:
            key = create_key(session, args.tenant, settings)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    info(f"created a key for tenant {args.tenant!r}; it is shown only this once")
    info("webhooks to this tenant are signed with the secret served at GET /v1/webhooks/secret")
    print(key)
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from argd.persistence.db import session_scope
    from argd.persistence.models import ApiKey

    settings = _settings()
    _ready_schema(settings)
    with session_scope(settings) as session:
        rows = [
            {
                "prefix": key.prefix,
                "tenant": key.tenant.name,
                "created_at": key.created_at.isoformat() if key.created_at else None,
                "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
                "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
            }
            for key in session.scalars(select(ApiKey).order_by(ApiKey.created_at))
        ]
    if args.json:
        print_json(rows)
        return EXIT_OK
    print(f"{'PREFIX':18} {'TENANT':20} {'CREATED':20} {'STATE':8}")
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        created = row["created_at"] or ""
        print(f"{row['prefix']:18} {str(row['tenant'])[:20]:20} {created[:19]:20} {state:8}")
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from argd.persistence.db import session_scope
    from argd.persistence.keys import revoke_key

    settings = _settings()
    _ready_schema(settings)
    with session_scope(settings) as session:
        count = revoke_key(session, args.prefix)
    if count == 0:
        raise CliError(f"no active key with prefix {args.prefix!r}", EXIT_FAILURE)
    print(f"revoked {count} key(s) with prefix {args.prefix}")
    return EXIT_OK


def _quota_value(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'none', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def cmd_quota(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from argd.persistence.db import session_scope
    from argd.persistence.quotas import QUOTA_NAMES, set_quotas

    settings = _settings()
    _ready_schema(settings)
    changes = {name: getattr(args, name) for name in QUOTA_NAMES if hasattr(args, name)}
    try:
        with session_scope(settings) as session:
            quotas = set_quotas(session, args.tenant, changes)
    except LookupError as exc:
        raise CliError(str(exc).strip("'\"")) from None
    print_json({"tenant": args.tenant, **asdict(quotas)})
    return EXIT_OK


# ------------------------------------------------------------------------------------------------- helpers


def _settings() -> Any:
    """The ARGD_* settings, with a one-line error for a bad variable."""
    from pydantic import ValidationError

    from argd.persistence.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"ARGD_{'_'.join(str(p) for p in e.get('loc', ())).upper()}: {e.get('msg')}" for e in exc.errors()
        )
        raise CliError(f"invalid settings: {problems}") from None


def _safe_url(url: str) -> str:
    """A database URL with its password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the configured database"
