"""Who may use the admin API: tokens per named user with a role, and the Host names it answers to.

Two ASGI middlewares in front of every route but `/healthz` and `/metrics` (kubelet probes and
Prometheus scrapes, which send a pod IP as Host and carry no token; neither reveals a sample or
changes anything):

- `HostCheck`: the Host header must be one of `admin.allowed_hosts` (Starlette's
  TrustedHostMiddleware does the matching, wildcards included). A page on any other name that
  resolves to this address (DNS rebinding) gets 400 and no data.
- `TokenAuth`, when `admin.users` is not empty: each request names its user by a token, as
  `Authorization: Bearer <token>` (scripts, `edgeglm-cloud policy set --token-file`) or HTTP Basic
  with the user's name and the token as password (a browser asks for them). No or a wrong token:
  401 with a Basic challenge. Roles rank viewer < operator < admin (`required_role`): a change (any
  method but GET and HEAD) needs an operator, anything under /api/admin (the tokens) an admin;
  less gets 403. The user's name goes with the request (`request.state.admin_user`), so the policy
  history says who made each change. Tokens are kept only as SHA-256 digests, compared in constant
  time: the configured users' read from files at start (a Kubernetes Secret, say), and the ones an
  admin issued (`UserDirectory`) from the store, which every replica on one database shares. A
  replica re-reads the issued ones every `ISSUED_REFRESH_S`: a revoked token stops working at once
  on the replica that revoked it and within that time on the others. While the store cannot be
  read, a replica keeps the issued tokens it read last.

The dashboard's login (`/login`, routes in `cloud/api/web.py`) takes a token once and answers with
a session cookie: HttpOnly (no script on the page can read it), SameSite=Strict (no other site's
page sends it), Secure over HTTPS, valid for `SESSION_S`. The cookie is not the token: it is the
user's name, an expiry and an HMAC of both keyed by the token's digest, so every replica checks it
without shared state, and replacing a user's token ends their sessions. A session only reads: a
change needs the token itself in the Authorization header (scripts, the CLI, Swagger's Authorize),
so no page can make a browser change a policy by riding its cookie. A browser asking for a page
without a session is sent to /login.

With no users the API answers anyone who reaches it; `AdminConfig` allows that only on a loopback
address (or when `allow_anonymous` says the operator accepts it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path

from prometheus_client import Counter
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.config import ADMIN_ROLES, AdminRole
from cloud.store import StoreError, TokenRecord, VerdictRepository

logger = logging.getLogger(__name__)
Role = AdminRole
ADMIN_PREFIX = "/api/admin"
ISSUED_REFRESH_S = 2.0
ISSUED_TOKEN_BYTES = 32
OPEN_PATHS = frozenset({"/healthz", "/metrics"})
LOGIN_PATHS = frozenset({"/login", "/auth/login", "/auth/logout", "/static/style.css", "/static/icon.svg"})
SESSION_COOKIE = "edgeglm_session"
SESSION_S = 8 * 3600
READ_METHODS = frozenset({"GET", "HEAD"})
MIN_TOKEN_CHARS = 16


class AdminAuthError(ValueError):
    """A token file that is missing, unreadable or too short; the message names the file and the user."""


@dataclass(frozen=True)
class AdminIdentity:
    """One user of the admin API: name, role and the SHA-256 of their token."""

    name: str
    role: Role
    digest: bytes


def token_digest(token: str) -> bytes:
    """What is kept of a token (configured or issued): its SHA-256."""
    return hashlib.sha256(token.encode()).digest()


def load_identity(name: str, role: Role, token_file: Path) -> AdminIdentity:
    """Read a user's token (surrounding whitespace stripped) from `token_file`."""
    try:
        token = token_file.read_text().strip()
    except OSError as err:
        raise AdminAuthError(f"admin.users {name}: token_file {token_file} cannot be read ({err})") from err
    if len(token) < MIN_TOKEN_CHARS:
        raise AdminAuthError(
            f"admin.users {name}: the token in {token_file} has {len(token)} characters; give at least "
            f"{MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32 > {token_file}`)"
        )
    return AdminIdentity(name, role, token_digest(token))


def session_value(user: AdminIdentity, now: float | None = None) -> str:
    """The session cookie's value for `user`, valid SESSION_S from `now`."""
    expires = int((time.time() if now is None else now) + SESSION_S)
    name = base64.urlsafe_b64encode(user.name.encode()).decode().rstrip("=")
    return f"{name}.{expires}.{_session_tag(user, name, expires)}"


def _session_tag(user: AdminIdentity, name: str, expires: int) -> str:
    return hmac.new(user.digest, f"session:{name}.{expires}".encode(), hashlib.sha256).hexdigest()


def session_user(users: list[AdminIdentity], value: str, now: float | None = None) -> AdminIdentity | None:
    """The user a session cookie's value names, if its tag is theirs and it has not expired."""
    name, _, rest = value.partition(".")
    expires_text, _, tag = rest.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12 or int(expires_text) <= (now or time.time()):
        return None
    try:
        user_name = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    for user in users:
        if user.name == user_name and hmac.compare_digest(_session_tag(user, name, int(expires_text)), tag):
            return user
    return None


def user_by_token(users: list[AdminIdentity], token: str) -> AdminIdentity | None:
    """The user whose token this is; every digest is compared, so the time taken does not say which matched."""
    if not token:
        return None
    digest = token_digest(token)
    found = None
    for user in users:
        if hmac.compare_digest(user.digest, digest):
            found = user
    return found


class HostCheck:
    """Refuse (400) a request whose Host is not an allowed name, except on OPEN_PATHS."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        """Guard `app`; `allowed_hosts` as TrustedHostMiddleware takes them ("*" allows any)."""
        self._app = app
        self._checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the Host header of HTTP requests; pass everything else through."""
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            await self._checked(scope, receive, send)
        else:
            await self._app(scope, receive, send)


def required_role(method: str, path: str) -> Role:
    """The least role a request needs: admin under /api/admin, operator to change anything, else viewer."""
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return "admin"
    return "viewer" if method in READ_METHODS else "operator"


def allows(role: str, needed: Role) -> bool:
    """Whether `role` may do what `needed` may (roles rank viewer < operator < admin)."""
    return role in ADMIN_ROLES and ADMIN_ROLES.index(role) >= ADMIN_ROLES.index(needed)


class TokenNameError(ValueError):
    """An API token cannot be issued or revoked under that name; the message says why."""


class UserDirectory:
    """The admin API's users: the configured ones (token files) and those an admin issued (the store)."""

    def __init__(
        self,
        configured: list[AdminIdentity],
        store: VerdictRepository | None = None,
        refresh_s: float = ISSUED_REFRESH_S,
    ) -> None:
        """`configured` from admin.users; issued tokens live in `store` (None: none can be issued)."""
        self._configured = list(configured)
        self._names = {user.name for user in configured}
        self._store = store
        self._refresh_s = refresh_s
        self._issued: list[AdminIdentity] = []
        self._records: list[TokenRecord] = []
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def guarded(self) -> bool:
        """Whether the API asks who you are (some user is configured); otherwise it is open."""
        return bool(self._configured)

    async def users(self) -> list[AdminIdentity]:
        """Everyone who may sign in now: the configured users, then the issued tokens (re-read when stale)."""
        if self._store is not None and time.monotonic() - self._loaded_at >= self._refresh_s:
            async with self._lock:
                if time.monotonic() - self._loaded_at >= self._refresh_s:
                    await self._load(self._store)
        return [*self._configured, *self._issued]

    async def describe(self) -> list[dict[str, object]]:
        """Every user as JSON, without a digest: name, role, where it comes from, when and by whom issued."""
        await self.users()
        listed: list[dict[str, object]] = [
            {"name": u.name, "role": u.role, "source": "config", "created_at": None, "created_by": None}
            for u in self._configured
        ]
        listed += [
            {"name": r.name, "role": r.role, "source": "issued", "created_at": r.created_at, "created_by": r.created_by}
            for r in self._records
            if r.name not in self._names
        ]
        return listed

    async def issue(self, name: str, role: Role, by: str) -> str:
        """A new random token for `name` with `role`, kept as its digest; the token itself is returned once."""
        store = self._issuing_store()
        if name in self._names:
            raise TokenNameError(f"{name} is a configured user (admin.users); pick another name")
        token = secrets.token_urlsafe(ISSUED_TOKEN_BYTES)
        record = TokenRecord(name, role, token_digest(token), time.time(), by)
        if not await store.add_token(record):
            raise TokenNameError(f"a token named {name} is issued already; revoke it first to replace it")
        self._loaded_at = float("-inf")
        logger.warning("admin: %s issued an API token for %s (%s)", by, name, role)
        return token

    async def revoke(self, name: str, by: str) -> bool:
        """Forget the issued token of `name`; whether there was one. A configured user cannot be revoked here."""
        store = self._issuing_store()
        if name in self._names:
            raise TokenNameError(f"{name} is a configured user: remove it from admin.users (and its Secret)")
        gone = await store.remove_token(name)
        self._loaded_at = float("-inf")
        if gone:
            logger.warning("admin: %s revoked the API token of %s", by, name)
        return gone

    def _issuing_store(self) -> VerdictRepository:
        if not self._configured:
            raise TokenNameError("the admin API is open (no admin.users): configure an admin user to issue tokens")
        if self._store is None:
            raise TokenNameError("this admin API has no store to keep issued tokens in")
        return self._store

    async def _load(self, store: VerdictRepository) -> None:
        try:
            records = await store.list_tokens()
        except StoreError as err:
            logger.warning("admin: issued tokens cannot be read (%s); keeping the %d read last", err, len(self._issued))
        else:
            self._records = records
            self._issued = [
                AdminIdentity(r.name, r.role, r.digest)
                for r in records
                if r.name not in self._names and r.role in ADMIN_ROLES
            ]
        self._loaded_at = time.monotonic()


class TokenAuth:
    """Name the user of each request by their token; 401 without one, 403 for what their role may not do."""

    def __init__(self, app: ASGIApp, users: UserDirectory, refused: Counter | None = None) -> None:
        """Guard `app` for the `users` of a directory; `refused` counts refusals by reason."""
        self._app = app
        self._users = users
        self._refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate and authorise HTTP requests off OPEN_PATHS; pass everything else through."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"] in LOGIN_PATHS:
            await self._app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        users = await self._users.users()
        user = self._identify(users, headers)
        by_session = False
        if user is None and b"authorization" not in headers:
            user = self._from_session(users, headers)
            by_session = user is not None
        if user is None:
            self._count("wrong_token" if b"authorization" in headers or b"cookie" in headers else "no_token")
            if scope["method"] == "GET" and b"text/html" in headers.get(b"accept", b""):
                await send({"type": "http.response.start", "status": 303, "headers": [(b"location", b"/login")]})
                await send({"type": "http.response.body", "body": b""})
                return
            await _reply(send, 401, "a token is needed: Authorization: Bearer <token>, or Basic with it as password")
            return
        if by_session and scope["method"] not in READ_METHODS:
            self._count("session_change")
            await _reply(send, 403, "a browser session only reads; send the token as Authorization: Bearer to change")
            return
        needed = required_role(scope["method"], scope["path"])
        if not allows(user.role, needed):
            logger.warning("admin: %s (%s) refused %s %s", user.name, user.role, scope["method"], scope["path"])
            self._count("not_admin" if needed == "admin" else "viewer_change")
            await _reply(send, 403, f"user {user.name} is a {user.role}; this needs an {needed}'s token")
            return
        scope.setdefault("state", {})["admin_user"] = user.name
        await self._app(scope, receive, send)

    def _count(self, reason: str) -> None:
        if self._refused is not None:
            self._refused.labels(reason).inc()

    @staticmethod
    def _from_session(users: list[AdminIdentity], headers: dict[bytes, bytes]) -> AdminIdentity | None:
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get(b"cookie", b"").decode("latin-1"))
        except CookieError:
            return None
        morsel = cookies.get(SESSION_COOKIE)
        return None if morsel is None else session_user(users, morsel.value)

    @staticmethod
    def _identify(users: list[AdminIdentity], headers: dict[bytes, bytes]) -> AdminIdentity | None:
        header = headers.get(b"authorization", b"").decode("latin-1")
        kind, _, credentials = header.partition(" ")
        token = ""
        if kind.lower() == "bearer":
            token = credentials.strip()
        elif kind.lower() == "basic":
            try:
                token = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return None
        return user_by_token(users, token)


async def _reply(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), *(extra or [])]
    if status == 401:
        headers.append((b"www-authenticate", b'Basic realm="EdgeGLM admin", charset="UTF-8"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


# The dashboard loads only its own files; scripts run only from them (no inline script, no eval), so
# a label or description that carries markup cannot run. Style attributes are allowed (the page sets
# colours per edge); <style> elements are not. Swagger UI (/docs) starts from an inline script of
# FastAPI's and is left out.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
CACHEABLE_PREFIXES = ("/static/", "/docs-assets/")
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Add the Content-Security-Policy (off /docs) and the usual hardening headers to every HTTP response.

    Pages and API answers are also `Cache-Control: no-store` unless they say otherwise (the static
    files may be cached): a browser that signed out must not be shown the dashboard from its cache.
    """

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app`."""
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through, adding headers to the response start."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = list(_SECURITY_HEADERS)
        if not scope["path"].startswith("/docs"):
            headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))

        cacheable = scope["path"].startswith(CACHEABLE_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                own = list(message.get("headers", []))
                extra = list(headers)
                if not cacheable and not any(name.lower() == b"cache-control" for name, _ in own):
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*own, *extra]}
            await send(message)

        await self._app(scope, receive, send_with_headers)


class WriteRateLimit:
    """At most `burst` changes at once and `per_s` a second on average, per user (or client address when the
    API is open): a script gone wrong cannot publish thousands of policy versions to the fleet. 429 beyond,
    with Retry-After."""

    def __init__(self, app: ASGIApp, per_s: float, burst: int, refused: Counter | None = None) -> None:
        """Guard `app`'s writing requests (any method but GET and HEAD); `refused` counts the 429s."""
        self._app = app
        self._refused = refused
        self._per_s = per_s
        self._burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # who -> (tokens, at)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count writing HTTP requests against their sender's bucket."""
        if scope["type"] != "http" or scope["method"] in READ_METHODS:
            await self._app(scope, receive, send)
            return
        client = scope.get("client") or ("?", 0)
        who = str(scope.get("state", {}).get("admin_user") or client[0])
        now = time.monotonic()
        tokens, at = self._buckets.get(who, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._per_s)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self._per_s
            logger.warning("admin: %s is changing too fast; refused %s %s", who, scope["method"], scope["path"])
            if self._refused is not None:
                self._refused.labels("rate_limited").inc()
            await _reply(
                send,
                429,
                f"too many changes: at most {self._per_s:g} a second; retry in {wait:.1f} s",
                [(b"retry-after", str(max(1, round(wait))).encode())],
            )
            return
        self._buckets[who] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:  # bounded: forget the fullest (the idlest) buckets
            for key in sorted(self._buckets, key=lambda k: self._buckets[k][1])[:5_000]:
                del self._buckets[key]
        await self._app(scope, receive, send)
