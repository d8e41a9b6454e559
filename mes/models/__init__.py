"""Every table of the MES. Importing this package registers them all on ``SQLModel.metadata``."""

from mes.models.audit import AuditEntry, ESignature, IdempotencyRecord, SignatureMeaning
from mes.models.base import HUMAN_ROLES, Role, UTCDateTime, VersionedRecord
from mes.models.equipment import (
    Equipment,
    EquipmentClass,
    EquipmentKind,
    EquipmentLevel,
    EquipmentStatus,
)
from mes.models.identity import (
    ApiKey,
    AppUser,
    AuthEvent,
    AuthEventKind,
    AuthSession,
    RoleAssignment,
    UserStatus,
)
from mes.models.material import MaterialDefinition, MaterialKind

__all__ = [
    "HUMAN_ROLES",
    "ApiKey",
    "AppUser",
    "AuditEntry",
    "AuthEvent",
    "AuthEventKind",
    "AuthSession",
    "ESignature",
    "Equipment",
    "EquipmentClass",
    "EquipmentKind",
    "EquipmentLevel",
    "EquipmentStatus",
    "IdempotencyRecord",
    "MaterialDefinition",
    "MaterialKind",
    "Role",
    "RoleAssignment",
    "SignatureMeaning",
    "UTCDateTime",
    "UserStatus",
    "VersionedRecord",
]
