"""Webhook signing secrets at rest: AES-256-GCM under ``HOOKSTREAM_SECRET_KEY``.

Signing needs the secret itself (it cannot be hashed like an API key), so it is encrypted: a
database dump without the key does not hand out secrets. Stored form: ``enc:v1:`` + base64 of
(12-byte nonce || ciphertext+tag), with the webhook id as associated data so a ciphertext cannot be
copied onto another webhook. Without a key, secrets are stored as they are (development only;
every service warns at start-up). A value without the ``enc:v1:`` prefix is read as plaintext, so
setting a key later needs no migration of existing rows.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc:v1:"
KEY_BYTES = 32
_NONCE_BYTES = 12


class SecretBoxError(ValueError):
    """A stored secret cannot be opened (no key, wrong key, or corrupt); never carries the secret."""


def generate_key() -> str:
    """A new ``HOOKSTREAM_SECRET_KEY`` value: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


class SecretBox:
    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError(f"the key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key) if key is not None else None

    @property
    def encrypts(self) -> bool:
        return self._aead is not None

    def seal(self, secret: str, webhook_id: str) -> str:
        if self._aead is None:
            return secret
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), webhook_id.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, stored: str, webhook_id: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        if self._aead is None:
            raise SecretBoxError("the secret is encrypted but HOOKSTREAM_SECRET_KEY is not set")
        try:
            raw = base64.b64decode(stored[len(PREFIX):], validate=True)
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], webhook_id.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise SecretBoxError("the secret cannot be decrypted with HOOKSTREAM_SECRET_KEY "
                                 f"({type(exc).__name__})") from None
