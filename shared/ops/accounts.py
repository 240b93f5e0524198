"""Operators of the back office, their roles and API tokens, and the login throttle.

Passwords are hashed with werkzeug's scrypt; API tokens are random 256-bit secrets stored as
SHA-256 digests (a fast hash suits high-entropy secrets) and shown once, at creation. The login
session itself is the back office's business (:mod:`admin.auth`).

Roles, each including the one before: ``viewer`` reads everything; ``operator`` also retries,
resolves, replays, changes settings and flags, pauses and resumes; ``admin`` also manages users and
tokens and stops nodes. A token acts with its own role, never more than its user's current one.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone

from flask_login import UserMixin
from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, Text, delete, func, or_, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from shared.db.tables import login_failures
from shared.model.base import Base

TOKEN_PREFIX = "ozzy_"
#: Every role, weakest first; each may do what the ones before it may.
ROLES = ("viewer", "operator", "admin")
MIN_PASSWORD = 8
#: Failed logins per user name, and per client address, that close the door for the window.
LOGIN_FAILURES_ALLOWED = 5
LOGIN_WINDOW = timedelta(minutes=15)
#: A user name typed at the login form is kept to this length in the throttle's rows.
NAME_LIMIT = 200


def role_allows(role: str | None, needed: str) -> bool:
    """Whether ``role`` may do what needs ``needed`` (no role may do nothing)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def weaker_role(a: str, b: str) -> str:
    return a if ROLES.index(a) <= ROLES.index(b) else b


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


class User(UserMixin, Base):  # type: ignore[misc]  # flask-login ships no types
    __tablename__ = "ozzy_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(Text, unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    role: Mapped[str] = mapped_column(Text, default="operator")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(timezone.utc))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Named by the login cookie and checked on every request; replacing it ends every session.
    session_token: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def is_active(self) -> bool:
        return self.active

    def get_id(self) -> str:
        """What the login cookie stores: the user and the session generation it belongs to."""
        if self.session_token is None:
            self.new_session_token()
        return f"{self.id}:{self.session_token}"

    def new_session_token(self) -> None:
        """End every login session of this user (the next login starts a new one)."""
        self.session_token = secrets.token_urlsafe(24)

    def owns_session(self, token: str) -> bool:
        return self.active and self.session_token is not None and hmac.compare_digest(self.session_token, token)

    def set_password(self, password: str) -> None:
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class ApiToken(Base):
    __tablename__ = "ozzy_api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("ozzy_users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[str] = mapped_column(Text, unique=True)
    prefix: Mapped[str] = mapped_column(Text)
    #: The token's own role; None acts with its user's role. Never above the user's, at use time.
    role: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(timezone.utc))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def create_user(session: Session, username: str, password: str, role: str = "operator") -> User:
    user = User(username=username, active=True, role=check_role(role))
    user.set_password(password)
    session.add(user)
    session.flush()
    return user


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, user: User, name: str, role: str | None = None,
                 expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """A new token for ``user``: the stored row, and the secret itself (shown once, never stored).

    ``role`` above the user's own is a ValueError."""
    if role is not None and not role_allows(user.role, check_role(role)):
        raise ValueError(f"a token of {user.username} cannot be {role}: the user is {user.role}")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user.id, name=name, token_hash=_digest(secret), prefix=secret[:12], role=role,
                     expires_at=expires_at)
    session.add(token)
    session.flush()
    return token, secret


def revoke_token(session: Session, token_id: int) -> bool:
    token = session.get(ApiToken, token_id)
    if token is None or token.revoked_at is not None:
        return False
    token.revoked_at = datetime.now(timezone.utc)
    return True


def token_role(token: ApiToken, user: User) -> str:
    """What a token may do: its role, capped by its user's current one."""
    return weaker_role(token.role, user.role) if token.role else user.role


def authenticate_token(session: Session, secret: str) -> tuple[User, ApiToken] | None:
    """The active user and the live, unexpired token of ``secret``, recording its use; None for
    anything else (a refused use is not recorded)."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(secret), ApiToken.revoked_at.is_(None)))
    now = datetime.now(timezone.utc)
    if token is None or (token.expires_at is not None and token.expires_at <= now):
        return None
    user = session.get(User, token.user_id)
    if user is None or not user.active:
        return None
    token.last_used_at = now
    session.commit()
    return user, token


def user_for_token(session: Session, secret: str) -> User | None:
    """The active user a live token belongs to, recording its use; None for anything else."""
    found = authenticate_token(session, secret)
    return found[0] if found is not None else None


@functools.cache
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_urlsafe(16))


def verify_login(session: Session, username: str, password: str) -> User | None:
    """The active user with this name and password, or None. An unknown name costs the same hash as
    a known one, so response times do not tell which names exist."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        check_password_hash(_dummy_hash(), password)
        return None
    ok = user.check_password(password)
    return user if ok and user.active else None


def login_throttled(session: Session, username: str, client: str) -> bool:
    """Whether this name or this address failed :data:`LOGIN_FAILURES_ALLOWED` times in the window."""
    since = datetime.now(timezone.utc) - LOGIN_WINDOW
    recent = login_failures.c.failed_at > since
    by_name = select(func.count()).where(login_failures.c.username == username[:NAME_LIMIT], recent).scalar_subquery()
    by_client = select(func.count()).where(login_failures.c.client == client, recent).scalar_subquery()
    counts = session.execute(select(by_name, by_client)).one()
    return bool(max(counts) >= LOGIN_FAILURES_ALLOWED)


def record_login_failure(session: Session, username: str, client: str) -> None:
    """Count a failed login (committed by the caller); rows older than the window are dropped."""
    cutoff = datetime.now(timezone.utc) - LOGIN_WINDOW
    session.execute(delete(login_failures).where(
        or_(login_failures.c.username == username[:NAME_LIMIT], login_failures.c.client == client), login_failures.c.failed_at < cutoff))
    session.execute(login_failures.insert().values(username=username[:NAME_LIMIT], client=client))


def clear_login_failures(session: Session, username: str) -> None:
    """A successful login forgets its name's failures (its address's stay counted)."""
    session.execute(delete(login_failures).where(login_failures.c.username == username[:NAME_LIMIT]))
