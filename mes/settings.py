"""Settings: defaults < ``config/mes.yaml`` < ``config/mes.local.yaml`` < ``MES_*`` env < init.

Secrets (the JWT signing key) come only from the environment or a secret file, never YAML.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_CONFIG_DIR = Path("config")


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _YamlSource(PydanticBaseSettingsSource):
    """Reads ``mes.yaml`` then ``mes.local.yaml`` from the config directory."""

    SECRET_KEYS = frozenset({"jwt_secret"})

    def __init__(self, settings_cls: type[BaseSettings], config_dir: Path) -> None:
        super().__init__(settings_cls)
        self.config_dir = config_dir

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in ("mes.yaml", "mes.local.yaml"):
            path = self.config_dir / name
            if not path.is_file():
                continue
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: top level must be a mapping")
            leaked = self.SECRET_KEYS & loaded.keys()
            if leaked:
                raise ValueError(f"{path}: {sorted(leaked)} must come from the environment")
            data = _deep_merge(data, loaded)
        return data


class MesSettings(BaseSettings):
    """Everything the MES reads at start; loaded once and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="MES_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    env: Literal["development", "production", "test"] = "development"
    database_url: str = "sqlite+aiosqlite:///./var/mes.db"
    var_dir: Path = Path("var")
    config_dir: Path = DEFAULT_CONFIG_DIR
    plant_file: Path = Path("config/plant.yaml")
    # Routings and master recipes the demo creates (and QA approves where marked).
    work_masters_file: Path = Path("config/work_masters.yaml")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "info"

    jwt_secret: SecretStr | None = None
    jwt_issuer: str = "mes"
    jwt_audience: str = "mes-api"
    access_token_ttl: timedelta = timedelta(minutes=15)
    session_idle_timeout: timedelta = timedelta(minutes=10)
    # Shorter on high-value screens, longer on gloved-hand tablets (RELIABILITY 3.3); a user
    # with several roles gets the shortest. Roles not listed use session_idle_timeout.
    session_idle_timeout_by_role: dict[str, timedelta] = Field(
        default_factory=lambda: {
            "operator": timedelta(minutes=15),
            "qa": timedelta(minutes=5),
            "admin": timedelta(minutes=5),
        }
    )
    session_absolute_timeout: timedelta = timedelta(hours=12)
    lockout_threshold: int = Field(default=5, ge=1, le=20)
    password_min_length: int = Field(default=12, ge=8, le=128)
    password_hashing: Literal["standard", "strong", "test-cheap"] = "standard"

    # Sites whose equipment may run pilot batches on draft work masters (the R&D and pilot
    # center).
    pilot_sites: tuple[str, ...] = ("RDC",)

    # Web origins other than the MES's own allowed to call the API from a browser (a planning
    # tool on another host). Empty: same-origin only, and no CORS handling at all.
    cors_origins: tuple[str, ...] = ()

    # Tags and connectors of the line data (mes ingest, mes demo).
    telemetry_file: Path = Path("config/telemetry.yaml")
    # A value stamped further ahead of the server's clock than this is refused.
    telemetry_future_skew: timedelta = timedelta(minutes=5)

    # Background jobs (mes/background): run in this process too (``mes serve``, ``mes demo``);
    # a database lease lets exactly one process of a deployment run them at a time.
    background_enabled: bool = True
    background_lease_ttl: timedelta = timedelta(seconds=60)

    # Scheduling (mes/scheduling). This process solves queued scheduling runs (any number of
    # processes may: each claims a run atomically).
    schedule_runner_enabled: bool = True
    # Operations starting within this much of a run's horizon start keep their published slot.
    schedule_firm_horizon: timedelta = timedelta(hours=2)
    # A periodic full scheduling run (a background job); none: planners start runs.
    schedule_every: timedelta | None = None
    # Publish repair runs (after a breakdown or a late operation) without a planner.
    schedule_auto_publish_repairs: bool = False
    schedule_repair_time_limit_s: int = Field(default=10, ge=1, le=600)
    # An operation this late against its published plan triggers a repair run.
    schedule_late_after: timedelta = timedelta(minutes=30)
    # Where solver runs execute: a worker process (the API keeps its cores' worth of GIL) or
    # a thread.
    schedule_executor: Literal["process", "thread"] = "process"
    schedule_solver_workers: int = Field(default=2, ge=1, le=64)

    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    idempotency_ttl: timedelta = timedelta(hours=24)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """A browser sends its origin as scheme://host[:port], without a path or a slash."""
        origins = tuple(origin.strip().rstrip("/") for origin in value)
        for origin in origins:
            scheme, _, rest = origin.partition("://")
            if scheme not in ("http", "https") or not rest or "/" in rest:
                raise ValueError(f"{origin!r} is not an origin (https://host[:port])")
        return origins

    @field_validator("password_hashing")
    @classmethod
    def _cheap_only_in_tests(cls, value: str, info: Any) -> str:
        if value == "test-cheap" and info.data.get("env") == "production":
            raise ValueError("test-cheap password hashing is refused in production")
        return value

    def idle_timeout_for(self, roles: Iterable[str]) -> timedelta:
        """AC-6: the idle timeout of a session held by someone with ``roles``."""
        timeouts = [
            self.session_idle_timeout_by_role.get(str(r), self.session_idle_timeout) for r in roles
        ]
        return min(timeouts, default=self.session_idle_timeout)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_dir = Path(os.environ.get("MES_CONFIG_DIR", str(DEFAULT_CONFIG_DIR)))
        return (
            init_settings,
            env_settings,
            _YamlSource(settings_cls, config_dir),
            file_secret_settings,
        )


def load_settings(**overrides: Any) -> MesSettings:
    """Load settings once at a boundary (CLI command, app factory, test fixture)."""
    return MesSettings(**overrides)
