"""Identity through the HTTP API: login and lockout (AC-5), sessions and tokens (AC-6, S4),
account administration (AC-1, AT-1..3, S5), machine keys (RELIABILITY 3.1) and password
hashing strength (S3)."""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from pydantic import ValidationError
from sqlmodel import col, select

from mes.context import AppContext
from mes.identity.passwords import PasswordHasher
from mes.models import ApiKey, AuthEvent, AuthEventKind, Role
from mes.settings import MesSettings
from tests.conftest import PASSWORD, Actors, FakeClock, create_user, login

API = "/api/v1"
NEW_PASSWORD = "Quite-another-secret-42"
REDACTED = "<redacted>"


# --- helpers -------------------------------------------------------------------------------------


async def _login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(f"{API}/auth/token", data={"username": username, "password": password})


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _me(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.get(f"{API}/auth/me", headers=headers)


async def _user(client: httpx.AsyncClient, actors: Actors, username: str) -> httpx.Response:
    return await client.get(f"{API}/users/{username}", headers=actors["admin"])


async def _audit(
    client: httpx.AsyncClient, actors: Actors, entity_type: str, entity_id: str
) -> httpx.Response:
    response = await client.get(
        f"{API}/audit",
        params={"entity_type": entity_type, "entity_id": entity_id},
        headers=actors["admin"],
    )
    assert response.status_code == 200, response.text
    return response


async def _auth_events(ctx: AppContext, username: str | None = None) -> list[AuthEvent]:
    async with ctx.db.sessionmaker() as session:
        stmt = select(AuthEvent).order_by(col(AuthEvent.seq))
        if username is not None:
            stmt = stmt.where(AuthEvent.username == username)
        return list((await session.execute(stmt)).scalars())


def _kinds(events: list[AuthEvent]) -> list[str]:
    return [str(e.event) for e in events]


def _assert_problem(response: httpx.Response, status: int, rule: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    if rule is not None:
        assert body.get("rule") == rule, body


def _user_body(username: str, **extra: Any) -> dict[str, Any]:
    return {
        "username": username,
        "full_name": f"{username.title()} Example",
        "password": NEW_PASSWORD,
        "roles": ["operator"],
        "reason": "new hire",
        **extra,
    }


@pytest.fixture
async def alice(ctx: AppContext) -> str:
    """An operator account (created outside the API) for the login and session tests."""
    await create_user(ctx, "alice", [Role.operator])
    return "alice"


# --- login ---------------------------------------------------------------------------------------


async def test_login_returns_bearer_token(
    client: httpx.AsyncClient, ctx: AppContext, alice: str
) -> None:
    """AC-6 / S4: login answers an OAuth2 bearer token that lives access_token_ttl."""
    response = await _login(client, alice, PASSWORD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == int(ctx.settings.access_token_ttl.total_seconds())
    assert 0 < body["expires_in"] <= 15 * 60
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    me = await _me(client, _bearer(body["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["username"] == alice
    assert me.json()["kind"] == "user"
    assert me.json()["roles"] == ["operator"]
    assert _kinds(await _auth_events(ctx, alice)) == ["login_succeeded"]


async def test_wrong_password_is_401_problem(
    client: httpx.AsyncClient, ctx: AppContext, alice: str
) -> None:
    """AC-5: a wrong password is refused with 401 problem+json and recorded."""
    response = await _login(client, alice, "not-the-password-1")
    _assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "access_token" not in response.json()
    events = await _auth_events(ctx, alice)
    assert _kinds(events) == ["login_failed"]


async def test_unknown_user_answer_equals_wrong_password_answer(
    client: httpx.AsyncClient, ctx: AppContext, alice: str
) -> None:
    """AC-5: the answer does not reveal whether an account exists; both are recorded."""
    wrong = await _login(client, alice, "not-the-password-1")
    unknown = await _login(client, "nobody", "not-the-password-1")
    _assert_problem(unknown, 401)
    assert unknown.json()["detail"] == wrong.json()["detail"]
    assert _kinds(await _auth_events(ctx, "nobody")) == ["login_failed"]


async def test_five_failures_lock_the_account(
    client: httpx.AsyncClient, ctx: AppContext, actors: Actors, alice: str
) -> None:
    """AC-5: the 5th consecutive failure answers 403 (rule AC-5) and locks the account;
    the correct password is refused too, and the account's live session ends."""
    live = await login(client, alice)
    for attempt in range(1, 5):
        response = await _login(client, alice, f"wrong-password-{attempt}")
        _assert_problem(response, 401)
    fifth = await _login(client, alice, "wrong-password-5")
    _assert_problem(fifth, 403, rule="AC-5")

    user = await _user(client, actors, alice)
    assert user.status_code == 200, user.text
    assert user.json()["status"] == "locked"
    assert user.json()["locked_at"] is not None

    correct = await _login(client, alice, PASSWORD)
    _assert_problem(correct, 403, rule="AC-5")
    assert (await _me(client, live)).status_code == 401

    events = await _auth_events(ctx, alice)
    kinds = _kinds(events)
    assert kinds.count("login_failed") == 6  # five wrong passwords, then the refused correct one
    assert kinds.count("account_locked") == 1
    assert [e.detail for e in events if e.event == AuthEventKind.login_failed][:5] == [
        f"consecutive failures: {n}" for n in range(1, 6)
    ]
    audit = (await _audit(client, actors, "user", alice)).json()["items"]
    lock = [e for e in audit if e["action"] == "lock"]
    assert len(lock) == 1
    assert {"field": "status", "old": "active", "new": "locked"} in lock[0]["changes"]


async def test_admin_unlock_restores_login(
    client: httpx.AsyncClient, ctx: AppContext, actors: Actors, alice: str
) -> None:
    """AC-5: only an administrator's unlock lets a locked account log in again."""
    for attempt in range(5):
        await _login(client, alice, f"wrong-password-{attempt}")
    assert (await _user(client, actors, alice)).json()["status"] == "locked"

    unlocked = await client.post(
        f"{API}/users/{alice}/unlock",
        json={"reason": "identity confirmed"},
        headers=actors["admin"],
    )
    assert unlocked.status_code == 200, unlocked.text
    assert unlocked.json()["status"] == "active"
    assert unlocked.json()["failed_attempts"] == 0
    assert unlocked.json()["locked_at"] is None

    response = await _login(client, alice, PASSWORD)
    assert response.status_code == 200, response.text
    assert "account_unlocked" in _kinds(await _auth_events(ctx, alice))


async def test_unlock_is_admin_only(client: httpx.AsyncClient, actors: Actors, alice: str) -> None:
    """AC-2 / AC-5: a locked account cannot be unlocked by QA or by its owner."""
    for attempt in range(5):
        await _login(client, alice, f"wrong-password-{attempt}")
    for role in ("qa", "supervisor", "operator"):
        response = await client.post(
            f"{API}/users/{alice}/unlock", json={"reason": "please"}, headers=actors[role]
        )
        _assert_problem(response, 403)
    assert (await _user(client, actors, alice)).json()["status"] == "locked"


async def test_successful_login_resets_the_failure_counter(
    client: httpx.AsyncClient, actors: Actors, alice: str
) -> None:
    """AC-5: only failures *in a row* count; a successful login starts the count again."""
    for attempt in range(4):
        _assert_problem(await _login(client, alice, f"wrong-password-{attempt}"), 401)
    assert (await _user(client, actors, alice)).json()["failed_attempts"] == 4
    assert (await _login(client, alice, PASSWORD)).status_code == 200
    assert (await _user(client, actors, alice)).json()["failed_attempts"] == 0
    for attempt in range(4):
        _assert_problem(await _login(client, alice, f"wrong-again-{attempt}"), 401)
    user = (await _user(client, actors, alice)).json()
    assert user["status"] == "active"
    assert user["failed_attempts"] == 4
    assert (await _login(client, alice, PASSWORD)).status_code == 200


# --- sessions ------------------------------------------------------------------------------------


async def test_idle_session_times_out(
    client: httpx.AsyncClient, ctx: AppContext, clock: FakeClock, alice: str
) -> None:
    """AC-6: activity keeps an operator's session alive; 16 idle minutes (operator timeout
    15) end it on the next request."""
    headers = await login(client, alice)
    clock.advance(timedelta(minutes=14))
    assert (await _me(client, headers)).status_code == 200
    clock.advance(timedelta(minutes=14))  # 28 min since login, 14 since the last request
    assert (await _me(client, headers)).status_code == 200

    clock.advance(timedelta(minutes=16))
    expired = await _me(client, headers)
    _assert_problem(expired, 401, rule="AC-6")
    assert "idle_timeout" in expired.json()["detail"]
    # Ended for good: the next request is refused too, even without more idle time.
    _assert_problem(await _me(client, headers), 401, rule="AC-6")

    async with ctx.db.sessionmaker() as session:
        result = await session.execute(
            select(AuthEvent).where(AuthEvent.event == AuthEventKind.session_expired)
        )
        assert [e.detail for e in result.scalars()] == ["idle_timeout"]


@pytest.mark.parametrize(
    ("roles", "alive_after", "dead_after"),
    [
        ([Role.qa], 4, 6),
        ([Role.admin], 4, 6),
        ([Role.planner], 9, 11),
        ([Role.operator, Role.qa], 4, 6),
    ],
)
async def test_idle_timeout_depends_on_role(
    client: httpx.AsyncClient,
    ctx: AppContext,
    clock: FakeClock,
    roles: list[Role],
    alive_after: int,
    dead_after: int,
) -> None:
    """AC-6 / RELIABILITY 3.3: QA and admin screens time out sooner; the shortest applies."""
    await create_user(ctx, "rita", roles)
    headers = await login(client, "rita")
    clock.advance(timedelta(minutes=alive_after))
    assert (await _me(client, headers)).status_code == 200
    clock.advance(timedelta(minutes=dead_after))
    _assert_problem(await _me(client, headers), 401, rule="AC-6")


async def test_logout_revokes_the_token(
    client: httpx.AsyncClient, ctx: AppContext, alice: str
) -> None:
    """S4: after logout the same token is refused on the next request."""
    headers = await login(client, alice)
    assert (await _me(client, headers)).status_code == 200
    response = await client.post(f"{API}/auth/logout", headers=headers)
    assert response.status_code == 204, response.text
    _assert_problem(await _me(client, headers), 401)
    assert "logout" in _kinds(await _auth_events(ctx, alice))


async def test_refresh_issues_a_token_for_the_same_session(
    client: httpx.AsyncClient, alice: str
) -> None:
    """S4: refresh gives a working token bound to the same session, so logout ends both."""
    headers = await login(client, alice)
    response = await client.post(f"{API}/auth/refresh", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] > 0
    refreshed = _bearer(body["access_token"])
    me = await _me(client, refreshed)
    assert me.status_code == 200, me.text
    assert me.json()["username"] == alice

    assert (await client.post(f"{API}/auth/logout", headers=headers)).status_code == 204
    _assert_problem(await _me(client, refreshed), 401)


async def test_refresh_needs_a_valid_token(client: httpx.AsyncClient, actors: Actors) -> None:
    """S4: refresh cannot be had anonymously or with a machine key."""
    _assert_problem(await client.post(f"{API}/auth/refresh"), 401)
    _assert_problem(await client.post(f"{API}/auth/refresh", headers=actors["machine"]), 403)


async def test_disabling_a_user_ends_their_session(
    client: httpx.AsyncClient, actors: Actors, alice: str
) -> None:
    """S4 / AC-1: a disabled account's existing token is refused on the next request and
    it cannot log in; the account is kept."""
    headers = await login(client, alice)
    assert (await _me(client, headers)).status_code == 200
    response = await client.post(
        f"{API}/users/{alice}/disable", json={"reason": "left the company"}, headers=actors["admin"]
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "disabled"
    _assert_problem(await _me(client, headers), 401)
    _assert_problem(await _login(client, alice, PASSWORD), 401)
    assert (await _user(client, actors, alice)).json()["status"] == "disabled"


# --- token forgeries (S4) ------------------------------------------------------------------------


def _secret(ctx: AppContext) -> str:
    assert ctx.settings.jwt_secret is not None
    return ctx.settings.jwt_secret.get_secret_value()


def _forge(kind: str, claims: dict[str, Any], secret: str) -> str:
    now = datetime.now(UTC)
    if kind == "alg-none":
        return jwt.encode(claims, None, algorithm="none")
    if kind == "alg-none-unsigned-header-swap":
        payload = jwt.encode(claims, secret, algorithm="HS256").split(".")[1]
        none_header = jwt.encode(claims, None, algorithm="none").split(".")[0]
        return f"{none_header}.{payload}."
    if kind == "other-secret":
        return jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256")
    if kind == "hs512-with-our-secret":
        with warnings.catch_warnings():  # our 52-byte key is short for SHA-512; irrelevant here
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            return jwt.encode(claims, secret, algorithm="HS512")
    if kind == "expired":
        past = now - timedelta(hours=1)
        stale = {**claims, "iat": int(past.timestamp()), "nbf": int(past.timestamp())}
        stale["exp"] = int((now - timedelta(minutes=5)).timestamp())
        return jwt.encode(stale, secret, algorithm="HS256")
    if kind == "wrong-audience":
        return jwt.encode({**claims, "aud": "someone-else"}, secret, algorithm="HS256")
    if kind == "wrong-issuer":
        return jwt.encode({**claims, "iss": "evil"}, secret, algorithm="HS256")
    if kind == "no-session-claim":
        return jwt.encode(
            {k: v for k, v in claims.items() if k != "sid"}, secret, algorithm="HS256"
        )
    if kind == "tampered-signature":
        token = jwt.encode(claims, secret, algorithm="HS256")
        last = "A" if token[-1] != "A" else "B"
        return token[:-1] + last
    if kind == "garbage":
        return "not-a-jwt"
    if kind == "valid-copy":
        return jwt.encode(claims, secret, algorithm="HS256")
    raise AssertionError(kind)


FORGERIES = [
    "alg-none",
    "alg-none-unsigned-header-swap",
    "other-secret",
    "hs512-with-our-secret",
    "expired",
    "wrong-audience",
    "wrong-issuer",
    "no-session-claim",
    "tampered-signature",
    "garbage",
]


@pytest.mark.parametrize("kind", FORGERIES)
async def test_forged_token_is_refused(
    client: httpx.AsyncClient, ctx: AppContext, alice: str, kind: str
) -> None:
    """S4: alg=none, a foreign key, an unpinned algorithm, an expired or otherwise invalid
    token is refused with 401, although it names a live session."""
    token = (await _login(client, alice, PASSWORD)).json()["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    # Control: the same claims re-signed properly are accepted, so only the forgery differs.
    control = await _me(client, _bearer(_forge("valid-copy", claims, _secret(ctx))))
    assert control.status_code == 200, control.text

    response = await _me(client, _bearer(_forge(kind, claims, _secret(ctx))))
    _assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_no_credentials_is_401(client: httpx.AsyncClient) -> None:
    """S4: a protected route without credentials answers 401 problem+json."""
    response = await _me(client, {})
    _assert_problem(response, 401)


# --- own password --------------------------------------------------------------------------------


async def test_change_own_password_requires_current_password(
    client: httpx.AsyncClient, actors: Actors, alice: str
) -> None:
    """S3: a wrong current password is refused with 422 naming the field; nothing changes."""
    headers = await login(client, alice)
    version = (await _user(client, actors, alice)).json()["version"]
    response = await client.post(
        f"{API}/auth/password",
        json={"current_password": "not-my-password-1", "new_password": NEW_PASSWORD},
        headers=headers,
    )
    _assert_problem(response, 422)
    assert response.json()["field"] == "current_password"
    user = (await _user(client, actors, alice)).json()
    assert user["version"] == version
    assert user["failed_attempts"] == 1, "a wrong current password counts toward AC-5"
    assert (await _login(client, alice, PASSWORD)).status_code == 200
    _assert_problem(await _login(client, alice, NEW_PASSWORD), 401)


async def test_change_own_password_refuses_weak_password(
    client: httpx.AsyncClient, alice: str
) -> None:
    """S3: the new password must meet the policy; 422 names new_password."""
    headers = await login(client, alice)
    response = await client.post(
        f"{API}/auth/password",
        json={"current_password": PASSWORD, "new_password": "short-1"},
        headers=headers,
    )
    _assert_problem(response, 422)
    assert response.json()["field"] == "new_password"
    assert (await _login(client, alice, PASSWORD)).status_code == 200


async def test_change_own_password(client: httpx.AsyncClient, actors: Actors, alice: str) -> None:
    """S3 / AT-1: after a change the old password no longer logs in, the new one does, and
    the change is audited without the password."""
    headers = await login(client, alice)
    response = await client.post(
        f"{API}/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert response.status_code == 204, response.text
    _assert_problem(await _login(client, alice, PASSWORD), 401)
    assert (await _login(client, alice, NEW_PASSWORD)).status_code == 200

    audit = await _audit(client, actors, "user", alice)
    changes = [e for e in audit.json()["items"] if e["action"] == "password"]
    assert len(changes) == 1
    assert changes[0]["username"] == alice
    assert changes[0]["changes"] == [{"field": "password", "old": REDACTED, "new": REDACTED}]
    assert NEW_PASSWORD not in audit.text
    assert PASSWORD not in audit.text


# --- account administration ----------------------------------------------------------------------


async def test_admin_creates_user(client: httpx.AsyncClient, actors: Actors) -> None:
    """AC-1 / AT-1 / AT-2: create answers 201 with ETag and Location, never the password or
    its hash, and writes an audit entry with the password redacted."""
    response = await client.post(f"{API}/users", json=_user_body("bob"), headers=actors["admin"])
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == '"1"'
    assert response.headers["location"] == f"{API}/users/bob"
    body = response.json()
    assert body["username"] == "bob"
    assert body["roles"] == ["operator"]
    assert body["status"] == "active"
    assert body["version"] == 1
    assert not {"password", "password_hash"} & body.keys()
    assert NEW_PASSWORD not in response.text
    assert "$argon2" not in response.text

    fetched = await client.get(response.headers["location"], headers=actors["admin"])
    assert fetched.status_code == 200
    assert fetched.headers["etag"] == '"1"'
    assert "$argon2" not in fetched.text

    audit = await _audit(client, actors, "user", "bob")
    entries = audit.json()["items"]
    assert [e["action"] for e in entries] == ["create"]
    entry = entries[0]
    assert entry["username"] == "admin"
    assert entry["reason"] == "new hire"
    assert entry["entity_version"] == 1
    assert {"field": "password", "old": None, "new": REDACTED} in entry["changes"]
    assert {"field": "roles", "old": None, "new": ["operator"]} in entry["changes"]
    assert NEW_PASSWORD not in audit.text
    assert "$argon2" not in audit.text
    assert "password_hash" not in audit.text

    assert (await _login(client, "bob", NEW_PASSWORD)).status_code == 200


async def test_duplicate_username_is_409(client: httpx.AsyncClient, actors: Actors) -> None:
    """AC-1: a username is taken once; a second create is 409 and changes nothing."""
    first = await client.post(f"{API}/users", json=_user_body("bob"), headers=actors["admin"])
    assert first.status_code == 201, first.text
    second = await client.post(
        f"{API}/users",
        json=_user_body("bob", full_name="Another Bob", password="Different-secret-77"),
        headers=actors["admin"],
    )
    _assert_problem(second, 409, rule="AC-1")
    assert second.json()["field"] == "username"
    assert (await _user(client, actors, "bob")).json()["full_name"] == "Bob Example"
    _assert_problem(await _login(client, "bob", "Different-secret-77"), 401)


async def test_disabled_username_is_never_reused(
    client: httpx.AsyncClient, actors: Actors, alice: str
) -> None:
    """AC-1: a disabled account keeps its username; it cannot be handed to someone else."""
    disabled = await client.post(
        f"{API}/users/{alice}/disable", json={"reason": "left"}, headers=actors["admin"]
    )
    assert disabled.status_code == 200, disabled.text
    response = await client.post(f"{API}/users", json=_user_body(alice), headers=actors["admin"])
    _assert_problem(response, 409, rule="AC-1")


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("Sh0rt-pw", id="too-short"),
        pytest.param("abababababababab", id="too-few-distinct-characters"),
        pytest.param("carol-is-my-password-1", id="contains-username"),
    ],
)
async def test_weak_password_is_422(
    client: httpx.AsyncClient, actors: Actors, password: str
) -> None:
    """S3: a weak password is refused with 422 naming the field; no account is created."""
    response = await client.post(
        f"{API}/users", json=_user_body("carol", password=password), headers=actors["admin"]
    )
    _assert_problem(response, 422)
    assert response.json()["field"] == "password"
    assert password not in response.text
    _assert_problem(await _user(client, actors, "carol"), 404)


async def test_patch_user_requires_if_match(
    client: httpx.AsyncClient, actors: Actors, alice: str
) -> None:
    """RELIABILITY 2.2 / AT-3: PATCH without If-Match is 428, with a stale one 412, with the
    current one 200 and a new ETag."""
    current = await _user(client, actors, alice)
    assert current.headers["etag"] == '"1"'
    change = {"full_name": "Alice Liddell", "reason": "name corrected"}

    missing = await client.patch(f"{API}/users/{alice}", json=change, headers=actors["admin"])
    _assert_problem(missing, 428)

    stale = await client.patch(
        f"{API}/users/{alice}", json=change, headers={**actors["admin"], "If-Match": '"7"'}
    )
    _assert_problem(stale, 412)
    assert stale.headers["etag"] == '"1"'
    assert (await _user(client, actors, alice)).json()["full_name"] == "Alice"

    ok = await client.patch(
        f"{API}/users/{alice}", json=change, headers={**actors["admin"], "If-Match": '"1"'}
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["etag"] == '"2"'
    assert ok.json()["version"] == 2
    assert ok.json()["full_name"] == "Alice Liddell"

    again = await client.patch(
        f"{API}/users/{alice}",
        json={"full_name": "Alice Again", "reason": "second edit"},
        headers={**actors["admin"], "If-Match": '"1"'},
    )
    _assert_problem(again, 412)
    assert (await _user(client, actors, alice)).json()["full_name"] == "Alice Liddell"


async def test_patch_user_requires_reason(
    client: httpx.AsyncClient, actors: Actors, alice: str
) -> None:
    """AT-3: an update without a reason is refused and changes nothing."""
    response = await client.patch(
        f"{API}/users/{alice}",
        json={"full_name": "No Reason"},
        headers={**actors["admin"], "If-Match": '"1"'},
    )
    _assert_problem(response, 422)
    assert (await _user(client, actors, alice)).json()["version"] == 1


MASS_ASSIGNMENT = [
    pytest.param({"status": "disabled"}, id="status"),
    pytest.param({"version": 99}, id="version"),
    pytest.param({"password_hash": "$argon2id$v=19$m=8,t=1,p=1$AAAA$BBBB"}, id="password_hash"),
    pytest.param({"failed_attempts": 0}, id="failed_attempts"),
    pytest.param({"locked_at": None}, id="locked_at"),
    pytest.param({"id": "00000000-0000-0000-0000-000000000000"}, id="id"),
    pytest.param({"created_at": "2020-01-01T00:00:00Z"}, id="created_at"),
]


@pytest.mark.parametrize("extra", MASS_ASSIGNMENT)
async def test_patch_user_refuses_extra_fields(
    client: httpx.AsyncClient, actors: Actors, alice: str, extra: dict[str, Any]
) -> None:
    """S5: PATCH with a server-owned field is 422 naming it; the account is unchanged."""
    before = (await _user(client, actors, alice)).json()
    response = await client.patch(
        f"{API}/users/{alice}",
        json={"full_name": "Mallory", "reason": "sneaky", **extra},
        headers={**actors["admin"], "If-Match": '"1"'},
    )
    _assert_problem(response, 422)
    assert [e["field"] for e in response.json()["errors"]] == list(extra)
    assert (await _user(client, actors, alice)).json() == before
    assert (await _login(client, alice, PASSWORD)).status_code == 200


@pytest.mark.parametrize("extra", MASS_ASSIGNMENT)
async def test_create_user_refuses_extra_fields(
    client: httpx.AsyncClient, actors: Actors, extra: dict[str, Any]
) -> None:
    """S5: POST /users with a server-owned field is 422 naming it; no account is created."""
    response = await client.post(
        f"{API}/users", json=_user_body("mallory", **extra), headers=actors["admin"]
    )
    _assert_problem(response, 422)
    assert [e["field"] for e in response.json()["errors"]] == list(extra)
    _assert_problem(await _user(client, actors, "mallory"), 404)


async def test_role_change_is_audited(
    client: httpx.AsyncClient, actors: Actors, alice: str
) -> None:
    """AT-2 / VAL-1: a role change is audited with the old and new role lists and reason."""
    response = await client.patch(
        f"{API}/users/{alice}",
        json={"roles": ["supervisor", "operator"], "reason": "promoted to shift lead"},
        headers={**actors["admin"], "If-Match": '"1"'},
    )
    assert response.status_code == 200, response.text
    assert response.json()["roles"] == ["operator", "supervisor"]

    entries = (await _audit(client, actors, "user", alice)).json()["items"]
    updates = [e for e in entries if e["action"] == "update"]
    assert len(updates) == 1
    entry = updates[0]
    assert entry["username"] == "admin"
    assert entry["reason"] == "promoted to shift lead"
    assert entry["entity_version"] == 2
    assert entry["changes"] == [
        {"field": "roles", "old": ["operator"], "new": ["operator", "supervisor"]}
    ]
    me = await _me(client, await login(client, alice))
    assert me.json()["roles"] == ["operator", "supervisor"]


async def test_admin_cannot_remove_own_admin_role(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    """AC-2: an administrator cannot drop their own admin role (no lock-out of the last
    admin by mistake); nothing changes."""
    before = await _user(client, actors, "admin")
    response = await client.patch(
        f"{API}/users/admin",
        json={"roles": ["qa"], "reason": "switch jobs"},
        headers={**actors["admin"], "If-Match": before.headers["etag"]},
    )
    _assert_problem(response, 403)
    after = (await _user(client, actors, "admin")).json()
    assert after["roles"] == ["admin"]
    assert after["version"] == before.json()["version"]
    assert [
        e["action"] for e in (await _audit(client, actors, "user", "admin")).json()["items"]
    ] == ["create"]


async def test_admin_cannot_disable_own_account(client: httpx.AsyncClient, actors: Actors) -> None:
    """AC-2: an administrator cannot disable themselves."""
    response = await client.post(
        f"{API}/users/admin/disable", json={"reason": "oops"}, headers=actors["admin"]
    )
    _assert_problem(response, 403)
    assert (await _user(client, actors, "admin")).json()["status"] == "active"
    assert (await _me(client, actors["admin"])).status_code == 200


# --- machine keys --------------------------------------------------------------------------------


async def _issue_key(client: httpx.AsyncClient, actors: Actors, name: str) -> httpx.Response:
    response = await client.post(
        f"{API}/api-keys",
        json={"name": name, "sources": [name], "reason": "new press"},
        headers=actors["admin"],
    )
    assert response.status_code == 201, response.text
    return response


async def test_api_key_secret_is_shown_once(
    client: httpx.AsyncClient, ctx: AppContext, actors: Actors
) -> None:
    """RELIABILITY 3.1: the secret is in the create answer only, and stored as SHA-256."""
    created = await _issue_key(client, actors, "press-7")
    assert created.headers["location"] == f"{API}/api-keys/press-7"
    secret = created.json()["api_key"]
    assert secret.startswith("mes_")
    assert created.json()["key_prefix"] == secret[:12]
    assert created.json()["sources"] == ["press-7"]

    listed = await client.get(f"{API}/api-keys", headers=actors["admin"])
    assert listed.status_code == 200
    assert "press-7" in [k["name"] for k in listed.json()["items"]]
    assert all("api_key" not in k for k in listed.json()["items"])
    one = await client.get(f"{API}/api-keys/press-7", headers=actors["admin"])
    assert one.status_code == 200
    assert "api_key" not in one.json()
    audit = await _audit(client, actors, "api_key", "press-7")
    for response in (listed, one, audit):
        assert secret not in response.text

    async with ctx.db.sessionmaker() as session:
        key = (await session.execute(select(ApiKey).where(ApiKey.name == "press-7"))).scalar_one()
    assert key.key_hash == hashlib.sha256(secret.encode()).hexdigest()


async def test_api_key_authenticates_as_machine(client: httpx.AsyncClient, actors: Actors) -> None:
    """RELIABILITY 3.1: a machine key authenticates as kind machine with role machine."""
    secret = (await _issue_key(client, actors, "press-7")).json()["api_key"]
    me = await _me(client, {"X-API-Key": secret})
    assert me.status_code == 200, me.text
    assert me.json()["kind"] == "machine"
    assert me.json()["roles"] == ["machine"]
    assert me.json()["username"] == "key:press-7"


async def test_revoked_api_key_is_refused(
    client: httpx.AsyncClient, ctx: AppContext, actors: Actors
) -> None:
    """RELIABILITY 3.1: a revoked key is refused from the next request on, and recorded."""
    secret = (await _issue_key(client, actors, "press-7")).json()["api_key"]
    assert (await _me(client, {"X-API-Key": secret})).status_code == 200
    revoked = await client.post(
        f"{API}/api-keys/press-7/revoke", json={"reason": "press scrapped"}, headers=actors["admin"]
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    _assert_problem(await _me(client, {"X-API-Key": secret}), 401)
    assert "api_key_rejected" in _kinds(await _auth_events(ctx))


KEY_FORGERIES: dict[str, Callable[[str], str]] = {
    "well-formed-unknown": lambda real: "mes_" + "A" * 43,
    "right-prefix-wrong-secret": lambda real: real[:12] + "B" * (len(real) - 12),
    "truncated": lambda real: real[:-1],
    "extended": lambda real: real + "x",
    "garbage": lambda real: "garbage",
}


@pytest.mark.parametrize("kind", sorted(KEY_FORGERIES))
async def test_forged_api_key_is_refused(
    client: httpx.AsyncClient, ctx: AppContext, actors: Actors, kind: str
) -> None:
    """RELIABILITY 3.1: only the exact issued secret authenticates (same lookup prefix is not
    enough); anything else is 401 and recorded."""
    real = actors["machine"]["X-API-Key"]
    assert (await _me(client, {"X-API-Key": real})).status_code == 200
    secret = KEY_FORGERIES[kind](real)
    assert secret != real
    _assert_problem(await _me(client, {"X-API-Key": secret}), 401)
    assert _kinds(await _auth_events(ctx)).count("api_key_rejected") == 1


async def test_machine_key_on_human_route_is_403(client: httpx.AsyncClient, actors: Actors) -> None:
    """RELIABILITY 3.1 / AC-2: machine keys are refused on human routes."""
    response = await client.get(f"{API}/equipment", headers=actors["machine"])
    _assert_problem(response, 403, rule="AC-2")
    _assert_problem(await client.post(f"{API}/auth/logout", headers=actors["machine"]), 403)
    _assert_problem(await client.get(f"{API}/users", headers=actors["machine"]), 403)


# --- S3: password hashing strength ---------------------------------------------------------------

ARGON2 = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$")


async def test_standard_hasher_is_strong_argon2id() -> None:
    """S3: the standard profile stores Argon2id with m >= 19456 KiB and t >= 2 (OWASP)."""
    hasher = PasswordHasher("standard")
    hashed = await hasher.hash(PASSWORD)
    match = ARGON2.fullmatch(hashed)
    assert match, hashed
    memory, time_cost, parallelism = (int(g) for g in match.groups())
    assert memory >= 19456
    assert time_cost >= 2
    assert parallelism >= 1
    assert PASSWORD not in hashed
    assert await hasher.verify(PASSWORD, hashed) == (True, None)
    assert (await hasher.verify("wrong-password-1", hashed))[0] is False
    assert await hasher.hash(PASSWORD) != hashed  # salted


def _settings(tmp_path: Path, **values: Any) -> MesSettings:
    return MesSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
        var_dir=tmp_path / "var",
        jwt_secret="s" * 48,
        **values,
    )


def test_production_refuses_cheap_hashing(tmp_path: Path) -> None:
    """S3: the cheap test hashing profile cannot be configured in production."""
    with pytest.raises(ValidationError, match="password_hashing"):
        _settings(tmp_path, env="production", password_hashing="test-cheap")
    assert _settings(tmp_path, env="production").password_hashing == "standard"
    assert _settings(tmp_path, env="test", password_hashing="test-cheap").env == "test"
