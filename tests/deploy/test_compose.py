"""Static checks of the deployment files: Docker cannot run here, so these keep them from drifting.

They parse docker-compose.yml and the Dockerfile and compare them with the code: every ARGD_* variable is
a real setting, every container command is a real `argd` command, the services have healthchecks and
volumes, the worker reserves a GPU, and the image runs as a non-root user with a CUDA build of torch.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from argd.cli.main import build_parser
from argd.persistence.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ARGD_SERVICES = ("migrate", "api", "worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def test_services_are_all_there(services: dict[str, Any]) -> None:
    assert {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker"} <= set(services)


def test_every_argd_variable_is_a_setting(services: dict[str, Any]) -> None:
    known = {f"ARGD_{name.upper()}" for name in Settings.model_fields}
    for name in ARGD_SERVICES:
        env = _env(services[name])
        unknown = sorted(k for k in env if k.startswith("ARGD_") and k not in known)
        assert not unknown, f"{name}: {unknown} are not fields of argd.persistence.settings.Settings"
        # Production runs on Postgres and Redis, never on the embedded defaults, with a shared data folder.
        assert (
            env["ARGD_DATABASE_URL"].startswith("postgresql+psycopg://")
            and "@postgres:5432/" in env["ARGD_DATABASE_URL"]
        )
        assert env["ARGD_BROKER_URL"].startswith("redis://redis:6379/")
        assert env["ARGD_DATA_DIR"] == "/var/lib/argd"
        # Artifacts go to the MinIO bucket that minio-init creates, with MinIO's own credentials.
        assert env["ARGD_ARTIFACT_URL"] == "s3://${MINIO_BUCKET:-argd}/artifacts"
        assert env["ARGD_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["ARGD_S3_SECRET_ACCESS_KEY"].startswith("${MINIO_ROOT_PASSWORD:?")


def _sample_value(match: re.Match[str]) -> str:
    """A value for a `${NAME...}` interpolation: its default (`:-x`), a sample password, else empty."""
    name, rest = match.group(1), match.group(2) or ""
    if rest.startswith(":-"):
        return rest[2:]
    return "sample" if "PASSWORD" in name else ""


def test_compose_environment_builds_valid_settings(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The values themselves pass the settings' validation (interpolations replaced by sample values)."""
    for name in ARGD_SERVICES:
        for key, value in _env(services[name]).items():
            sample = re.sub(r"\$\{(\w+)(:[-?][^}]*)?\}", _sample_value, value)
            monkeypatch.setenv(key, sample)
        settings = Settings()
        assert settings.data_dir == Path("/var/lib/argd")
        assert not settings.uses_filesystem_broker
        assert settings.uses_s3_store


def test_secrets_come_from_the_environment_not_the_file(services: dict[str, Any]) -> None:
    postgres_password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert postgres_password.startswith("${POSTGRES_PASSWORD:?")
    for name in ARGD_SERVICES:
        env = _env(services[name])
        assert env["ARGD_API_KEY_PEPPER"].startswith("${ARGD_API_KEY_PEPPER:?")
        assert "${POSTGRES_PASSWORD:?" in env["ARGD_DATABASE_URL"]


def test_container_commands_are_argd_commands(services: dict[str, Any]) -> None:
    parser = build_parser()
    for name in ARGD_SERVICES:
        args = parser.parse_args(_command(services[name]))
        assert callable(args.func)
    assert _command(services["migrate"]) == ["migrate"]
    api = parser.parse_args(_command(services["api"]))
    assert (api.command, api.no_worker, api.no_migrate, api.host, api.port) == (
        "serve",
        True,
        True,
        "0.0.0.0",
        8000,
    )
    assert parser.parse_args(_command(services["worker"])).command == "worker"


def test_startup_order_and_healthchecks(services: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "api"):
        check = services[name]["healthcheck"]
        assert check["test"] and check["interval"] and check["retries"] >= 3, name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    assert "ready" in services["minio"]["healthcheck"]["test"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in " ".join(services["minio-init"]["command"])
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["minio-init"]["condition"] == "service_completed_successfully"


def test_api_port_and_volumes(compose: dict[str, Any], services: dict[str, Any]) -> None:
    ports = [str(p) for p in services["api"]["ports"]]
    assert any(p.endswith(":8000") for p in ports)
    declared = set(compose["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert any(v.endswith(":/data") for v in services["minio"]["volumes"])
    # No volume is shared between the API and the workers: artifacts live in the object store.
    api_volumes = {v.split(":", 1)[0] for v in services["api"].get("volumes", [])}
    worker_volumes = {v.split(":", 1)[0] for v in services["worker"].get("volumes", [])}
    assert not api_volumes & worker_volumes, f"api and worker share {api_volumes & worker_volumes}"
    for name in ("postgres", "redis", *ARGD_SERVICES):
        for volume in services[name].get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in declared, f"{name} mounts undeclared volume {source}"


def test_worker_reserves_one_gpu(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = _env(services["worker"])
    assert env["ARGD_DEVICE"] == "cuda" and env["ARGD_WORKER_CONCURRENCY"] == "1"
    assert "deploy" not in services["api"]  # the API never trains


def test_all_argd_services_share_one_image(services: dict[str, Any]) -> None:
    images = {services[name]["image"] for name in ARGD_SERVICES}
    assert len(images) == 1
    for name in ARGD_SERVICES:
        assert services[name]["build"]["dockerfile"] == "Dockerfile"


def test_dockerfile_non_root_cuda_torch_and_entry_point(dockerfile: list[str]) -> None:
    args = dict(
        line.split(None, 1)[1].split("=", 1) for line in dockerfile if line.startswith("ARG ") and "=" in line
    )
    index_url = args["TORCH_INDEX_URL"]
    assert re.fullmatch(r"https://\S+/whl/cu\d{3}", index_url), "torch must come from a CUDA wheel index"
    torch_install = next(line for line in dockerfile if "pip install" in line and "TORCH_INDEX_URL" in line)
    project_install = next(
        i for i, line in enumerate(dockerfile) if re.search(r"pip install (-e )?\"?\.", line)
    )
    assert dockerfile.index(torch_install) < project_install, "torch first, so pip keeps the CUDA build"

    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert any("useradd" in line and users[-1] in line for line in dockerfile)
    assert dockerfile[-2:] == ['ENTRYPOINT ["argd"]', 'CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]']
    assert any(line.startswith("EXPOSE 8000") for line in dockerfile)
    assert any("ARGD_DATA_DIR=/var/lib/argd" in line for line in dockerfile)


def test_image_keeps_the_migrations_beside_the_package(dockerfile: list[str]) -> None:
    """`argd migrate` finds its scripts next to the package, so the image installs the tree in place."""
    from argd.persistence.migrate import MIGRATIONS_DIR

    assert MIGRATIONS_DIR == ROOT / "migrations"
    assert any(re.search(r"pip install -e \"?\.", line) for line in dockerfile)
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("migrations", "argd", "pyproject.toml", "README.md"):
        assert needed not in ignored, f".dockerignore drops {needed}, which the image needs"
    for secret_or_bulk in (".git", ".venv", ".env", "argd-data"):
        assert secret_or_bulk in ignored


def test_readme_documents_every_setting_with_its_default() -> None:
    """The README's configuration table lists exactly the settings' fields, with the code's defaults."""
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(ARGD_[A-Z0-9_]+)` \| ([^|]+) \|", readme, re.MULTILINE))
    expected = {f"ARGD_{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert set(rows) == set(expected), f"README table vs Settings: {sorted(set(rows) ^ set(expected))}"
    for name, field in expected.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, bool):
            assert f"`{str(default).lower()}`" in rows[name], name
        elif isinstance(default, int | float) or (isinstance(default, str) and default):
            assert f"`{default}`" in rows[name], (
                f"{name}: README says {rows[name].strip()}, code says {default}"
            )
