"""Opening an asyncua client the way the plant needs it, shared by the connector and browse.

asyncua accepts any server certificate unless a validator is set, infers PEM only from a
``.pem`` suffix, and its trust store reads directories only. This module closes those gaps
and turns asyncua's exceptions into the connector error tree, so the host knows whether to
retry (``ConnectorNotReady``) or to stop until someone fixes credentials or configuration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.ua_utils import data_type_to_variant_type
from asyncua.crypto import security_policies, uacrypto
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509

from connectors.base import (
    ConnectorAuthError,
    ConnectorConfigError,
    ConnectorError,
    ConnectorNotReady,
)
from connectors.opcua import mapping
from connectors.opcua.config import SecurityConfig

AUTH_STATUS_CODES = frozenset(
    {
        StatusCodes.BadUserAccessDenied,
        StatusCodes.BadIdentityTokenInvalid,
        StatusCodes.BadIdentityTokenRejected,
        StatusCodes.BadUserSignatureInvalid,
        StatusCodes.BadSecurityChecksFailed,
        StatusCodes.BadSecurityPolicyRejected,
        StatusCodes.BadSecurityModeRejected,
        StatusCodes.BadApplicationSignatureInvalid,
        StatusCodes.BadNoValidCertificates,
    }
)
"""Refusals that retrying cannot fix (besides every ``BadCertificate*`` code)."""

TRANSIENT_STATUS_PREFIXES = ("BadSession", "BadSecureChannel", "BadConnection", "BadTimeout")
"""Service faults on a write that say nothing about the value: the session is in trouble."""

SERVER_VALIDATION = (
    CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_SERVER
)


class SetpointError(ConnectorError):
    """A setpoint write did not happen as asked; the machine state must be checked."""


class UnknownSetpoint(SetpointError):
    """The tag is not among the configured ``setpoints``."""


class SetpointRejected(SetpointError):
    """The value does not fit the node's data type, or the server refused the write."""


class SetpointNotConfirmed(SetpointError):
    """The server accepted the write but reading the node back gave another value."""


def classify_error(exc: BaseException, endpoint: str) -> ConnectorError:
    """Map an exception from connecting or subscribing onto the connector error tree."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, UaStatusCodeError):
        status = ua.StatusCode(exc.code)
        if exc.code in AUTH_STATUS_CODES or status.name.startswith("BadCertificate"):
            return ConnectorAuthError(f"{endpoint}: refused: {status.name}")
        return ConnectorNotReady(f"{endpoint}: {status.name}")
    if isinstance(exc, OSError | TimeoutError):
        return ConnectorNotReady(f"{endpoint}: unreachable: {exc!r}")
    message = str(exc)
    if "No matching endpoints" in message:
        return ConnectorConfigError(
            f"security: {endpoint} offers no endpoint with this policy and mode"
        )
    if "certificate mismatch" in message:
        return ConnectorAuthError(f"{endpoint}: server certificate changed during connect")
    return ConnectorNotReady(f"{endpoint}: {exc!r}")


def _extension(path: Path) -> str:
    """``pem`` or ``der`` from the content: asyncua guesses from the file suffix only."""
    with path.open("rb") as handle:
        return "pem" if handle.read(64).lstrip().startswith(b"-----BEGIN") else "der"


class _FileOrDirTrustStore(TrustStore):
    """asyncua's trust store, also accepting single certificate or CRL files."""

    def __init__(self, trust_locations: list[Path], crl_locations: list[Path]) -> None:
        super().__init__(trust_locations, crl_locations)
        self._files = {path for path in (*trust_locations, *crl_locations) if path.is_file()}

    async def _load_trust_location(self, location: Path) -> list[x509.Certificate]:
        if location in self._files:
            return [await uacrypto.load_certificate(location, _extension(location))]
        return await super()._load_trust_location(location)

    async def _load_crl_location(self, location: Path) -> list[x509.RevokedCertificate]:
        if location in self._files:
            return list(await self._load_crl(location))
        return await super()._load_crl_location(location)


def _require(path: Path | None, field: str, directory_ok: bool = False) -> Path:
    if path is None or not (path.is_file() or (directory_ok and path.is_dir())):
        raise ConnectorConfigError(f"security.{field}: {path} does not exist")
    return path


async def _apply_security(client: Client, security: SecurityConfig) -> None:
    cert = _require(security.certificate, "certificate")
    key = _require(security.private_key, "private_key")
    trusted = _require(security.trusted, "trusted", directory_ok=True)
    crl = _require(security.crl, "crl", directory_ok=True) if security.crl else None
    password = security.private_key_password
    mode = getattr(ua.MessageSecurityMode, security.mode)
    try:
        certificate = uacrypto.CertProperties(cert, _extension(cert))
        private_key = uacrypto.CertProperties(
            key, _extension(key), password.get_secret_value() if password else None
        )
        store = _FileOrDirTrustStore([trusted], [crl] if crl else [])
        await store.load()
    except (ValueError, TypeError, OSError) as exc:
        raise ConnectorConfigError(f"security: cannot load certificates: {exc}") from exc
    try:
        await client.set_security(
            security_policies.SecurityPolicyBasic256Sha256,
            certificate,
            private_key,
            mode=mode,
        )
    except (ValueError, TypeError) as exc:
        raise ConnectorConfigError(f"security: cannot load the client key pair: {exc}") from exc
    client.certificate_validator = CertificateValidator(SERVER_VALIDATION, store)


async def connect_client(
    endpoint: str,
    security: SecurityConfig,
    username: str | None = None,
    password: str | None = None,
    *,
    timeout_s: float = 10.0,
    session_timeout_ms: float = 3_600_000.0,
    watchdog_interval_s: float = 1.0,
    reconnect_max_delay_s: float = 30.0,
    auto_reconnect: bool = False,
) -> Client:
    """A connected, activated client; raises the connector errors on failure.

    The server certificate is validated against ``security.trusted`` (chain, validity,
    application URI, key usage, revocation) before the user's password is sent.
    """
    client = Client(endpoint, timeout=timeout_s, watchdog_intervall=watchdog_interval_s)
    client.name = client.description = "MES OPC UA connector"
    client.application_uri = security.application_uri
    client.session_timeout = int(session_timeout_ms)
    if username is not None:
        client.set_user(username)
    if password is not None:
        client.set_password(password)
    try:
        if security.policy != "None":
            await _apply_security(client, security)
        await client.connect(
            auto_reconnect=auto_reconnect,
            reconnect_max_delay=reconnect_max_delay_s,
            reconnect_request_timeout=timeout_s,
        )
    except (OSError, TimeoutError, UaError, ConnectorError) as exc:
        client.disconnect_socket()
        raise classify_error(exc, endpoint) from exc
    except asyncio.CancelledError:
        client.disconnect_socket()
        raise
    return client


async def write_confirmed(
    client: Client,
    node_id: ua.NodeId,
    value: object,
    variant_type: ua.VariantType | None,
    label: str,
) -> tuple[mapping.Scalar, ua.VariantType]:
    """Write ``value`` encoded as ``variant_type`` (read from the node's DataType when None),
    read the node back and return what it holds, with the variant type used."""
    try:
        if variant_type is None:
            data_type = await client.get_node(node_id).read_data_type()
            variant_type = await data_type_to_variant_type(client.get_node(data_type))
        variant = mapping.to_variant(value, variant_type)
        [status] = await client.uaclient.write_attributes(
            [node_id], [ua.DataValue(Value=variant)], AttributeIds.Value
        )
        if not status.is_good():
            raise SetpointRejected(f"{label}: server refused the write: {status.name}")
        [read_back] = await client.uaclient.read_attributes([node_id], AttributeIds.Value)
    except ValueError as exc:
        raise SetpointRejected(f"{label}: {exc}") from exc
    except UaStatusCodeError as exc:
        if ua.StatusCode(exc.code).name.startswith(TRANSIENT_STATUS_PREFIXES):
            raise ConnectorNotReady(f"{label}: write failed: {exc}") from exc
        raise SetpointRejected(f"{label}: {exc}") from exc
    except (OSError, TimeoutError) as exc:
        raise ConnectorNotReady(f"{label}: write failed: {exc!r}") from exc
    got = read_back.Value.Value if read_back.Value is not None else None
    read_status = read_back.StatusCode or ua.StatusCode()
    if not read_status.is_good() or not mapping.confirms(got, variant):
        raise SetpointNotConfirmed(
            f"{label}: wrote {variant.Value!r}, read back {got!r} ({read_status.name})"
        )
    return mapping.convert_value(got), variant_type
