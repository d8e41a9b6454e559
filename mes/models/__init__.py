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
from mes.models.lot import (
    EdgeKind,
    GenealogyEdge,
    LoadItem,
    Lot,
    LotOrigin,
    LotStatus,
    LotStatusTransition,
    MaterialTransaction,
    ScanEvent,
    SerialUnit,
    SterilizationLoad,
    Sublot,
    TransactionKind,
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
    "EdgeKind",
    "Equipment",
    "EquipmentClass",
    "EquipmentKind",
    "EquipmentLevel",
    "EquipmentStatus",
    "GenealogyEdge",
    "IdempotencyRecord",
    "LoadItem",
    "Lot",
    "LotOrigin",
    "LotStatus",
    "LotStatusTransition",
    "MaterialDefinition",
    "MaterialKind",
    "MaterialTransaction",
    "Role",
    "RoleAssignment",
    "ScanEvent",
    "SerialUnit",
    "SignatureMeaning",
    "SterilizationLoad",
    "Sublot",
    "TransactionKind",
    "UTCDateTime",
    "UserStatus",
    "VersionedRecord",
]
