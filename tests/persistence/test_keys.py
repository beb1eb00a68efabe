"""API keys are shown once, stored hashed, and authenticate only their own tenant until revoked."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from argd.persistence.keys import authenticate, create_key, revoke_key
from argd.persistence.models import ApiKey
from argd.persistence.settings import Settings

pytestmark = pytest.mark.service


def test_keys_authenticate_their_tenant_and_are_stored_hashed(db_session: Session) -> None:
    settings = Settings(api_key_pepper="pepper")
    alice = create_key(db_session, "alice-keys", settings)
    bob = create_key(db_session, "bob-keys", settings)
    db_session.commit()

    assert alice.startswith("argd_") and len(alice) > 40
    assert authenticate(db_session, alice, settings).name == "alice-keys"  # type: ignore[union-attr]
    assert authenticate(db_session, bob, settings).name == "bob-keys"  # type: ignore[union-attr]
    assert authenticate(db_session, alice + "x", settings) is None
    assert authenticate(db_session, "", settings) is None
    assert authenticate(db_session, alice, Settings(api_key_pepper="other")) is None

    stored = db_session.scalars(select(ApiKey.key_hash)).all()
    assert alice not in stored and all(len(h) == 64 for h in stored)

    row = db_session.scalar(select(ApiKey).where(ApiKey.prefix == alice[:13]))
    assert row is not None
    assert revoke_key(db_session, row.prefix) == 1
    db_session.commit()
    assert authenticate(db_session, alice, settings) is None
    assert authenticate(db_session, bob, settings) is not None
