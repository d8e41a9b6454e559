"""Every shipped configuration file loads, and the compose file matches the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from mes.cli import app as cli_app
from mes.plant.loader import parse_plant_file
from mes.settings import MesSettings

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config"


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_parses(path: Path) -> None:
    assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict)


def test_settings_load_from_shipped_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("MES_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MES_CONFIG_DIR", str(CONFIG))
    settings = MesSettings()
    assert settings.session_idle_timeout.total_seconds() == 600
    assert settings.lockout_threshold == 5


def test_settings_refuse_secrets_in_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mes.yaml").write_text("jwt_secret: in-the-repo\n", encoding="utf-8")
    monkeypatch.setenv("MES_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="environment"):
        MesSettings()


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mes.yaml").write_text("port: 9000\nlockout_threshold: 7\n", encoding="utf-8")
    monkeypatch.setenv("MES_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("MES_PORT", "9100")
    settings = MesSettings()
    assert (settings.port, settings.lockout_threshold) == (9100, 7)


def test_shipped_plant_model_is_valid() -> None:
    spec = parse_plant_file(CONFIG / "plant.yaml")
    sites = [n.code for n in spec.equipment[0].children]
    assert len(sites) == 3
    assert spec.materials
    assert spec.equipment_classes


def _cli_paths() -> set[tuple[str, ...]]:
    root = get_command(cli_app)
    paths: set[tuple[str, ...]] = set()

    def walk(command: object, prefix: tuple[str, ...]) -> None:
        commands = getattr(command, "commands", None)
        if not commands:
            paths.add(prefix)
            return
        for name, sub in commands.items():
            walk(sub, (*prefix, name))

    walk(root, ())
    return paths


def test_compose_is_valid_and_its_commands_exist() -> None:
    """Each service running the MES image runs a real `mes` command."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"db", "broker", "api"} <= services.keys()
    known = _cli_paths()
    mes_services = 0
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        command = service.get("command")
        if isinstance(command, list) and command and command[0] == "mes":
            mes_services += 1
            args = tuple(a for a in command[1:] if not a.startswith("-"))
            assert any(args[: len(p)] == p for p in known), f"{name}: mes {' '.join(args)}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
    assert mes_services >= 2
