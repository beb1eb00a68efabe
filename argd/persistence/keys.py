"""Tenants and their API keys: keys are random, shown once, and stored only as a keyed hash.

Keys carry 256 bits of randomness, so a single keyed SHA-256 (HMAC with the settings' pepper) is enough to
store them: there is nothing to brute-force, and lookups stay one indexed equality query.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from argd.persistence.models import ApiKey, Tenant, utcnow
from argd.persistence.settings import Settings, get_settings

KEY_PREFIX = "argd_"
_DISPLAY_CHARS = 8


def hash_key(key: str, settings: Settings | None = None) -> str:
    """The stored form of a key: hex HMAC-SHA256 under the pepper."""
    pepper = (settings or get_settings()).api_key_pepper.get_secret_value().encode()
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant with this name, created if missing."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("tenant name must be 1 to 200 characters")
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str, settings: Settings | None = None) -> str:
    """A new API key for the tenant (created if needed); the plaintext is returned once and never stored."""
    tenant = get_or_create_tenant(session, tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            tenant_id=tenant.id,
            prefix=key[: len(KEY_PREFIX) + _DISPLAY_CHARS],
            key_hash=hash_key(key, settings),
        )
    )
    session.flush()
    return key


@dataclass(frozen=True)
class KeyOwner:
    """The tenant a key belongs to, as the API needs it (columns, not an ORM object: polls are hot)."""

    id: str
    name: str


def authenticate(session: Session, key: str, settings: Settings | None = None) -> KeyOwner | None:
    """The tenant owning this key, or None for an unknown or revoked key (one query per request, so a
    revocation counts from the next request on).

    The look-up is by the key's HMAC, never by the key itself: how long the index search takes depends on
    a hash the caller cannot steer, and the hash found is compared again in constant time.
    """
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    digest = hash_key(key, settings)
    row = session.execute(
        select(Tenant.id, Tenant.name, ApiKey.key_hash)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return KeyOwner(id=row.id, name=row.name)


def revoke_key(session: Session, prefix: str) -> int:
    """Revoke the keys whose displayed prefix is `prefix`; returns how many were revoked."""
    rows = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))).all()
    for row in rows:
        row.revoked_at = utcnow()
    session.flush()
    return len(rows)
