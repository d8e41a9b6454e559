"""The per-process application context: settings, database, clock and shared services.

Built once by the lifespan (or a CLI command / test fixture) and handed to whoever needs it.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mes.clock import Clock, SystemClock
from mes.db import Database
from mes.identity.passwords import PasswordHasher
from mes.identity.tokens import TokenService
from mes.settings import MesSettings

if TYPE_CHECKING:
    from mes.scheduling.runner import SolverRunner

log = logging.getLogger(__name__)


def _jwt_secret(settings: MesSettings) -> str:
    """The signing key: MES_JWT_SECRET, else a random key kept 0600 in the var directory."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    if settings.env == "production":
        raise RuntimeError("MES_JWT_SECRET must be set in production")
    path = Path(settings.var_dir) / "jwt-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        log.info("generated a JWT signing key at %s", path)
    return path.read_text(encoding="utf-8").strip()


@dataclass
class ComponentHealth:
    name: str
    status: str
    detail: str | None = None


@dataclass
class AppContext:
    settings: MesSettings
    db: Database
    passwords: PasswordHasher
    tokens: TokenService
    clock: Clock = field(default_factory=SystemClock)
    started_at: datetime | None = None
    components: dict[str, ComponentHealth] = field(default_factory=dict)
    # The process's scheduling-run solver (mes.scheduling.runner), where it runs one.
    solver: SolverRunner | None = None

    @classmethod
    def build(cls, settings: MesSettings, clock: Clock | None = None) -> AppContext:
        clock = clock or SystemClock()
        return cls(
            settings=settings,
            db=Database.from_url(settings.database_url),
            passwords=PasswordHasher(settings.password_hashing),
            tokens=TokenService(
                _jwt_secret(settings),
                settings.jwt_issuer,
                settings.jwt_audience,
                settings.access_token_ttl,
            ),
            clock=clock,
            started_at=clock.now(),
        )

    async def close(self) -> None:
        await self.db.dispose()
