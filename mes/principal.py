"""Who is acting: a person (token session), a machine (API key) or the system (CLI, jobs)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from mes.models.base import Role


class PrincipalKind(StrEnum):
    user = "user"
    machine = "machine"
    system = "system"


@dataclass(frozen=True)
class Principal:
    """The authenticated actor of one unit of work; audit entries and signatures name it."""

    kind: PrincipalKind
    username: str
    full_name: str
    roles: frozenset[Role] = field(default_factory=frozenset)
    user_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    terminal: str | None = None
    sources: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Stable identity string used to scope idempotency keys."""
        return f"{self.kind}:{self.username}"

    def has_any(self, roles: frozenset[Role]) -> bool:
        return bool(self.roles & roles)


def system_principal(name: str) -> Principal:
    """The actor for CLI commands and background jobs (``system:<name>`` in the audit trail)."""
    return Principal(
        kind=PrincipalKind.system,
        username=f"system:{name}"[:64],
        full_name=f"System ({name})",
    )
