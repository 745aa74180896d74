"""The production compose file: valid for docker-compose, and shaped as the README says.

``docker-compose config`` only parses and interpolates; it needs no Docker daemon. The
structural checks read the YAML directly, so they run even where docker-compose is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
HEALTHCHECKED = ("postgres", "minio", "api")

requires_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not on PATH"
)


def _clean_env() -> dict[str, str]:
    """The environment without anything the compose file interpolates."""
    keys = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    return {k: v for k, v in os.environ.items() if k not in keys and not k.startswith("VAULT_")}


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "--project-directory", str(ROOT), "-f", str(COMPOSE), *args],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


@requires_compose
def test_config_with_env_example_is_valid() -> None:
    result = _compose("--env-file", str(ENV_EXAMPLE), "config", "-q")
    assert result.returncode == 0, result.stderr


@requires_compose
def test_config_without_secrets_is_refused(tmp_path: Path) -> None:
    """Every secret is required (``${VAR:?...}``): an empty env file must not pass."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _compose("--env-file", str(empty), "config", "-q")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "set " in result.stderr


@requires_compose
def test_interpolated_api_database_url_uses_app_role() -> None:
    result = _compose("--env-file", str(ENV_EXAMPLE), "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    api_env = _env(resolved["services"]["api"])
    url = make_url(api_env["VAULT_DATABASE_URL"])
    assert url.username == "vault_app"
    assert url.password == "change-me-app"  # from .env.example, not the owner's password
    setup_url = make_url(_env(resolved["services"]["setup"])["VAULT_DATABASE_URL"])
    assert setup_url.username == "vault_owner"
    assert setup_url.database == url.database == "vault"


@pytest.mark.parametrize("name", HEALTHCHECKED)
def test_services_declare_healthchecks(compose: dict[str, Any], name: str) -> None:
    check = compose["services"][name].get("healthcheck")
    assert check, f"{name} has no healthcheck"
    assert check.get("test"), f"{name} healthcheck has no test"
    assert not check.get("disable", False)


def test_api_healthcheck_probes_readyz(compose: dict[str, Any]) -> None:
    test = compose["services"]["api"]["healthcheck"]["test"]
    assert "/readyz" in " ".join(test if isinstance(test, list) else [test])


def test_named_volumes_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    assert {"pgdata", "miniodata"} <= declared
    mounts = {
        name: [str(v).split(":", 1)[0] for v in svc.get("volumes") or []]
        for name, svc in compose["services"].items()
    }
    assert "pgdata" in mounts["postgres"]
    assert "miniodata" in mounts["minio"]


def test_api_runs_as_app_role_in_production(compose: dict[str, Any]) -> None:
    api = _env(compose["services"]["api"])
    url = api["VAULT_DATABASE_URL"]
    assert url.startswith("postgresql://vault_app:"), url
    assert "vault_owner" not in url
    assert api["VAULT_ENV"] == "production"
    assert api["VAULT_STORE"] == "minio"
    for key in ("VAULT_KEK_FILE", "VAULT_JWT_KEY_FILE", "VAULT_LEDGER_KEY_FILE"):
        assert api[key].startswith("/run/secrets/"), key
    # Set in .env, they must reach the container: behind the TLS proxy, without the first,
    # every client has the proxy's address (one password guesser locks out everyone).
    for key in ("VAULT_TRUSTED_PROXIES", "VAULT_METRICS_TOKEN"):
        assert api[key] == f"${{{key}:-}}", key


def test_setup_migrates_as_owner_and_grants_app_role(compose: dict[str, Any]) -> None:
    setup = compose["services"]["setup"]
    assert _env(setup)["VAULT_DATABASE_URL"].startswith("postgresql://vault_owner:")
    command = setup["command"]
    command = " ".join(command) if isinstance(command, list) else command
    assert "admin migrate --grant-app-role vault_app" in command
    depends = compose["services"]["api"]["depends_on"]
    assert depends["setup"]["condition"] == "service_completed_successfully"
    init = (ROOT / "deploy" / "postgres-init.sh").read_text()
    assert "CREATE ROLE vault_app LOGIN" in init


def test_api_port_binds_loopback_only(compose: dict[str, Any]) -> None:
    for port in compose["services"]["api"].get("ports") or []:
        assert str(port).startswith("127.0.0.1:"), port
    for name in ("postgres", "minio"):
        assert not compose["services"][name].get("ports"), f"{name} should not publish ports"


def test_every_image_is_pinned_to_a_tag_other_than_latest(compose: dict[str, Any]) -> None:
    images = {
        name: service["image"]
        for name, service in compose["services"].items()
        if "image" in service
    }
    assert images, "no service names an image"
    for name, image in images.items():
        _, _, tag = image.rpartition("/")[2].partition(":")
        assert tag not in ("", "latest"), f"{name} runs {image}: pin a release tag"
    assert images["minio"].split(":", 1)[1].startswith("RELEASE.")


@pytest.mark.skipif(
    shutil.which("psql") is None or not os.environ.get("VAULT_TEST_DATABASE_URL"),
    reason="needs psql and VAULT_TEST_DATABASE_URL (a PostgreSQL server to create a role on)",
)
def test_postgres_init_takes_a_password_with_quotes() -> None:
    """The script pasted the password into its SQL: one holding a quote broke the statement
    (and psql printed it), leaving the volume without the service's role."""
    url = make_url(os.environ["VAULT_TEST_DATABASE_URL"])
    env = {
        **os.environ,
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": url.database or "test",
        "VAULT_APP_DB_PASSWORD": "it's a 'quoted' pass\\word; DROP ROLE x; --",
    }

    def psql(sql: str) -> str:
        command = ["psql", "-v", "ON_ERROR_STOP=1", "-Atc", sql, "-U", env["POSTGRES_USER"]]
        done = subprocess.run(
            [*command, env["POSTGRES_DB"]], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    if psql("SELECT count(*) FROM pg_roles WHERE rolname = 'vault_app'") != "0":
        pytest.skip("a vault_app role exists on this server already")
    try:
        ran = subprocess.run(
            ["sh", str(ROOT / "deploy" / "postgres-init.sh")],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert "quoted" not in ran.stdout + ran.stderr
        assert psql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'vault_app'") == "t"
    finally:
        psql(
            "DO $$BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'vault_app') THEN "
            f"EXECUTE 'REVOKE CONNECT ON DATABASE \"{env['POSTGRES_DB']}\" FROM vault_app'; "
            "DROP ROLE vault_app; END IF; END$$"
        )
