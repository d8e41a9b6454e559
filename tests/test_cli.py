"""The ``mes`` command end to end, as an operator of the system runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from mes.db import create_engine
from tests.conftest import BACKEND

REPO = Path(__file__).resolve().parents[1]
MES = str(Path(sys.executable).parent / "mes")


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
    env.update(
        MES_DATABASE_URL=database_url,
        MES_VAR_DIR=str(tmp_path / "var"),
        MES_ENV="test",
        MES_PASSWORD_HASHING="test-cheap",
        MES_JWT_SECRET="cli-test-secret-" + "y" * 40,
        COLUMNS="200",
    )
    return env


def mes(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MES, *args],
        env=env,
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_lists_the_commands(cli_env: dict[str, str]) -> None:
    result = mes(cli_env, "--help")
    assert result.returncode == 0
    for command in ("serve", "demo", "db", "users", "plant", "audit"):
        assert command in result.stdout


def test_db_upgrade_and_current(cli_env: dict[str, str]) -> None:
    upgraded = mes(cli_env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "revision" in upgraded.stdout
    current = mes(cli_env, "db", "current")
    assert current.returncode == 0, current.stdout + current.stderr


def test_users_create_then_duplicate_is_refused(cli_env: dict[str, str]) -> None:
    """AC-1: a username is never reused."""
    args = (
        "users",
        "create",
        "alice",
        "--full-name",
        "Alice Analyst",
        "--role",
        "qa",
        "--password-stdin",
    )
    created = mes(cli_env, *args, stdin="a-long-enough-secret-1\n")
    assert created.returncode == 0, created.stderr
    again = mes(cli_env, *args, stdin="a-long-enough-secret-1\n")
    assert again.returncode == 1
    assert "never reused" in again.stderr
    weak = mes(
        cli_env,
        "users",
        "create",
        "bob",
        "--full-name",
        "Bob",
        "--role",
        "operator",
        "--password-stdin",
        stdin="short\n",
    )
    assert weak.returncode == 1
    assert "password" in weak.stderr


def test_plant_load_reports_and_is_repeatable(cli_env: dict[str, str]) -> None:
    first = mes(cli_env, "plant", "load", "config/plant.yaml")
    assert first.returncode == 0, first.stderr
    assert "equipment" in first.stdout
    second = mes(cli_env, "plant", "load", "config/plant.yaml")
    assert second.returncode == 0, second.stderr


def test_bad_plant_file_names_the_yaml_path(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "plant.yaml"
    bad.write_text(
        "equipment:\n  - code: X\n    name: X\n    level: enterprise\n"
        "    children:\n      - {code: Y, name: Y, level: galaxy}\n",
        encoding="utf-8",
    )
    result = mes(cli_env, "plant", "load", str(bad))
    assert result.returncode == 1
    assert "equipment[0].children[0].level" in result.stderr


async def test_audit_verify_names_a_tampered_row(
    cli_env: dict[str, str], database_url: str
) -> None:
    """AT-5: raw-SQL tampering with one audit row makes `mes audit verify` exit non-zero
    and name that row."""
    assert mes(cli_env, "plant", "load", "config/plant.yaml").returncode == 0
    ok = mes(cli_env, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stdout
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            target = (
                await conn.execute(
                    text("SELECT seq FROM audit_entry ORDER BY seq LIMIT 1 OFFSET 41")
                )
            ).scalar_one()
            if BACKEND == "postgresql":
                await conn.execute(text("ALTER TABLE audit_entry DISABLE TRIGGER USER"))
            else:
                await conn.execute(text("DROP TRIGGER audit_entry_no_update"))
            await conn.execute(
                text("UPDATE audit_entry SET reason = 'backdated' WHERE seq = :s"), {"s": target}
            )
            if BACKEND == "postgresql":
                await conn.execute(text("ALTER TABLE audit_entry ENABLE TRIGGER USER"))
    finally:
        await engine.dispose()
    broken = mes(cli_env, "audit", "verify")
    assert broken.returncode == 1
    assert f"seq={target}" in broken.stderr
    assert "altered" in broken.stderr


def test_demo_prepares_users_and_plant(cli_env: dict[str, str]) -> None:
    result = mes(cli_env, "demo", "--no-serve")
    assert result.returncode == 0, result.stderr
    assert "demo-pass-2026!" in result.stdout
    assert "/docs" in result.stdout
    assert mes(cli_env, "audit", "verify").returncode == 0


def test_keys_create_prints_secret_once(cli_env: dict[str, str]) -> None:
    result = mes(cli_env, "keys", "create", "gw-7", "--source", "gw-7")
    assert result.returncode == 0, result.stderr
    assert "mes_" in result.stdout


WANTED = (
    "CORE/ROP-TRAIN-1/R-101/melt_temp",  # OPC UA
    "CORE/RM-BRD-01/rh",  # MQTT, JSON
    "CORE/IM-CELL-1/IM-501/good_count",  # MQTT, Sparkplug B
)


def test_demo_shows_live_values_from_the_simulator(cli_env: dict[str, str], tmp_path: Path) -> None:
    """The demo's plant (simulator, embedded amqtt broker, ingest) fills the tags within
    seconds: OPC UA units, MQTT rooms (JSON) and moulding machines (Sparkplug B)."""
    import httpx

    port = _free_port()
    log = (tmp_path / "demo.log").open("w")
    demo = subprocess.Popen(
        [MES, "demo", "--port", str(port), "--broker-port", "0", "--opcua-port", "0"],
        env=cli_env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 120
        token = None
        fresh: set[str] = set()
        while time.monotonic() < deadline and demo.poll() is None:
            time.sleep(1)
            try:
                if token is None:
                    login = httpx.post(
                        f"{base}/auth/token",
                        data={"username": "qa", "password": "demo-pass-2026!"},
                    )
                    if login.status_code != 200:
                        continue
                    token = login.json()["access_token"]
                tags = httpx.get(f"{base}/tags", headers={"Authorization": f"Bearer {token}"})
            except httpx.TransportError:
                continue
            fresh = {t["tag"] for t in tags.json()["items"] if t["value"] is not None}
            if set(WANTED) <= fresh:
                break
        assert demo.poll() is None, (tmp_path / "demo.log").read_text()
        assert set(WANTED) - fresh == set()
    finally:
        demo.terminate()
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(10)
        log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
