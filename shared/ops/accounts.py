"""Operators of the back office and their API tokens.

Passwords are hashed with werkzeug's scrypt; API tokens are random 256-bit secrets stored as
SHA-256 digests (a fast hash suits high-entropy secrets) and shown once, at creation. The login
session itself is the back office's business (:mod:`admin.auth`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timezone

from flask_login import UserMixin
from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from shared.model.base import Base

TOKEN_PREFIX = "ozzy_"


class User(UserMixin, Base):  # type: ignore[misc]  # flask-login ships no types
    __tablename__ = "ozzy_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(Text, unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(timezone.utc))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def create_user(session: Session, username: str, password: str) -> User:
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    user = User(username=username, active=True)
    user.set_password(password)
    session.add(user)
    session.flush()
    return user


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, user: User, name: str) -> tuple[ApiToken, str]:
    """A new token for ``user``: the stored row, and the secret itself (shown once, never stored)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user.id, name=name, token_hash=_digest(secret), prefix=secret[:12])
    session.add(token)
    session.flush()
    return token, secret


def revoke_token(session: Session, token_id: int) -> bool:
    token = session.get(ApiToken, token_id)
    if token is None or token.revoked_at is not None:
        return False
    token.revoked_at = datetime.now(timezone.utc)
    return True


def user_for_token(session: Session, secret: str) -> User | None:
    """The active user a live token belongs to, recording its use; None for anything else."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(secret), ApiToken.revoked_at.is_(None)))
    if token is None:
        return None
    user = session.get(User, token.user_id)
    if user is None or not user.active:
        return None
    token.last_used_at = datetime.now(timezone.utc)
    session.commit()
    return user
