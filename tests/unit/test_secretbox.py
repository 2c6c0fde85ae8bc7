"""Webhook secrets at rest: sealed with AES-256-GCM, bound to their webhook, plaintext passthrough."""

from __future__ import annotations

import base64

import pytest

from hookstream.core.secretbox import PREFIX, SecretBox, SecretBoxError, generate_key
from hookstream.core.signing import generate_secret

KEY = base64.b64decode(generate_key())


def test_sealed_secret_round_trips_and_hides_the_secret() -> None:
    box, secret = SecretBox(KEY), generate_secret()
    stored = box.seal(secret, "wh_1")
    assert stored.startswith(PREFIX)
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    assert box.open(stored, "wh_1") == secret
    assert box.seal(secret, "wh_1") != stored  # a fresh nonce every time


def test_a_sealed_secret_cannot_be_moved_to_another_webhook() -> None:
    box = SecretBox(KEY)
    with pytest.raises(SecretBoxError):
        box.open(box.seal(generate_secret(), "wh_1"), "wh_2")


def test_wrong_or_missing_key_is_a_clear_error_without_the_secret() -> None:
    secret = generate_secret()
    stored = SecretBox(KEY).seal(secret, "wh_1")
    for box in (SecretBox(base64.b64decode(generate_key())), SecretBox(None)):
        with pytest.raises(SecretBoxError, match="HOOKSTREAM_SECRET_KEY") as caught:
            box.open(stored, "wh_1")
        assert secret not in str(caught.value)


def test_plaintext_rows_still_open_and_no_key_stores_plaintext() -> None:
    secret = generate_secret()
    assert SecretBox(KEY).open(secret, "wh_1") == secret
    assert SecretBox(None).seal(secret, "wh_1") == secret
    assert not SecretBox(None).encrypts and SecretBox(KEY).encrypts


def test_tampered_ciphertext_is_refused() -> None:
    box = SecretBox(KEY)
    stored = box.seal(generate_secret(), "wh_1")
    raw = bytearray(base64.b64decode(stored[len(PREFIX):]))
    raw[-1] ^= 1
    with pytest.raises(SecretBoxError):
        box.open(PREFIX + base64.b64encode(bytes(raw)).decode(), "wh_1")
