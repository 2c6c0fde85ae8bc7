"""Organizations and their API keys.

A key is ``hsk_<key id>_<secret>``: the id finds the row, the SHA-256 of the whole key is stored
and compared in constant time. The key carries 256 random bits, so a fast hash is enough and a
database dump does not hand out working keys. A key is printed once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import asyncpg

API_KEY_PREFIX = "hsk_"
_KEY_ID_BYTES = 9
_KEY_SECRET_BYTES = 32
# Compared against when a key id is unknown, so that a miss costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"hookstream-no-such-key").digest()


def new_id(prefix: str, nbytes: int = 12) -> str:
    return f"{prefix}_{secrets.token_hex(nbytes)}"


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def generate_api_key() -> tuple[str, str]:
    """A new (key id, key)."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    return key_id, f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_KEY_SECRET_BYTES)}"


def parse_key_id(key: str) -> str | None:
    if not key.startswith(API_KEY_PREFIX):
        return None
    key_id, sep, rest = key[len(API_KEY_PREFIX):].partition("_")
    return key_id if sep and key_id and rest else None


async def create_organization(conn: asyncpg.Connection, name: str) -> tuple[str, str]:
    """Create an organization with one API key; returns (organization id, API key)."""
    org_id = new_id("org", 8)
    key_id, key = generate_api_key()
    async with conn.transaction():
        await conn.execute("INSERT INTO organizations (id, name) VALUES ($1, $2)", org_id, name)
        await conn.execute("INSERT INTO api_keys (id, organization_id, key_hash) VALUES ($1, $2, $3)",
                           key_id, org_id, hash_api_key(key))
    return org_id, key


async def create_api_key(conn: asyncpg.Connection, org_id: str) -> str:
    key_id, key = generate_api_key()
    await conn.execute("INSERT INTO api_keys (id, organization_id, key_hash) VALUES ($1, $2, $3)",
                       key_id, org_id, hash_api_key(key))
    return key


async def authenticate(conn: asyncpg.Connection, key: str) -> str | None:
    """The organization id the key belongs to, or None. Constant-time in the secret part."""
    key_id = parse_key_id(key)
    row = None
    if key_id is not None:
        row = await conn.fetchrow(
            "SELECT organization_id, key_hash FROM api_keys WHERE id = $1 AND revoked_at IS NULL", key_id)
    stored = row["key_hash"] if row else _DUMMY_HASH
    if hmac.compare_digest(stored, hash_api_key(key)) and row is not None:
        return str(row["organization_id"])
    return None
