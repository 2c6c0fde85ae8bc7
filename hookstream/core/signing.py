"""Standard Webhooks signatures (https://www.standardwebhooks.com/), pure and I/O-free.

A secret is ``whsec_`` + base64 of random bytes; the HMAC key is the decoded bytes. The signed
content is ``{webhook-id}.{webhook-timestamp}.{body}``; the header value is ``v1,<base64 digest>``,
several of them space-separated while an old secret is still in its rotation grace period.
"""

from __future__ import annotations

import base64
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_RANDOM_BYTES = 32


def generate_secret() -> str:
    """A new endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_RANDOM_BYTES)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; the prefix is optional, as in the reference libraries."""
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    return base64.b64decode(raw, validate=True)


def sign(key: bytes, webhook_id: str, timestamp_s: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` under ``key``."""
    # hmac.digest is the one-shot C path: about half the cost of hmac.new().update().digest()
    digest = hmac.digest(key, f"{webhook_id}.{timestamp_s}.".encode() + body, "sha256")
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(keys: list[bytes], webhook_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one signature per active key, newest first."""
    return " ".join(sign(key, webhook_id, timestamp_s, body) for key in keys)


def verify(secret: str, webhook_id: str, timestamp_s: int, body: bytes, header: str) -> bool:
    """True when any ``v1`` signature in ``header`` matches (constant-time); for receivers and tests."""
    expected = sign(decode_secret(secret), webhook_id, timestamp_s, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in header.split(" ") if candidate)
