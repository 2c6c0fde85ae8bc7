"""Standard Webhooks signing: the published test vector, secret format, rotation headers, verify."""

from __future__ import annotations

import base64
import re

import pytest

from hookstream.core.signing import (
    SECRET_PREFIX,
    decode_secret,
    generate_secret,
    sign,
    signature_header,
    verify,
)

# The test vector published by standard-webhooks (libraries' shared test suite).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_matches_the_published_standard_webhooks_vector() -> None:
    key = decode_secret(VECTOR_SECRET)
    assert sign(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_signature_header_with_one_key_is_the_single_signature() -> None:
    key = decode_secret(VECTOR_SECRET)
    assert signature_header([key], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_verify_accepts_the_published_vector() -> None:
    assert verify(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, VECTOR_SIGNATURE)


def test_decode_secret_prefix_is_optional() -> None:
    without_prefix = VECTOR_SECRET.removeprefix(SECRET_PREFIX)
    assert decode_secret(without_prefix) == decode_secret(VECTOR_SECRET)
    assert decode_secret(VECTOR_SECRET) == base64.b64decode(without_prefix)
    assert verify(without_prefix, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, VECTOR_SIGNATURE)


def test_decode_secret_refuses_invalid_base64() -> None:
    with pytest.raises(ValueError):
        decode_secret("whsec_not base64!!")


def test_generate_secret_is_prefix_plus_base64_of_32_bytes() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    raw = secret.removeprefix("whsec_")
    assert re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", raw)
    assert len(base64.b64decode(raw, validate=True)) == 32
    assert len(decode_secret(secret)) == 32


def test_generate_secret_is_unique() -> None:
    secrets_made = {generate_secret() for _ in range(200)}
    assert len(secrets_made) == 200


def test_generated_secret_signs_and_verifies() -> None:
    secret = generate_secret()
    header = signature_header([decode_secret(secret)], "msg_1", 1700000000, b"{}")
    assert verify(secret, "msg_1", 1700000000, b"{}", header)


def test_signature_header_with_two_keys_is_space_separated_newest_first() -> None:
    new, old = generate_secret(), generate_secret()
    header = signature_header(
        [decode_secret(new), decode_secret(old)], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY
    )
    parts = header.split(" ")
    assert len(parts) == 2
    assert all(part.startswith("v1,") for part in parts)
    assert parts[0] == sign(decode_secret(new), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert parts[1] == sign(decode_secret(old), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert parts[0] != parts[1]


def test_verify_accepts_either_key_of_a_rotation_header() -> None:
    new, old = generate_secret(), generate_secret()
    header = signature_header(
        [decode_secret(new), decode_secret(old)], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY
    )
    assert verify(new, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, header)
    assert verify(old, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, header)
    assert not verify(generate_secret(), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, header)


def test_signature_header_with_no_keys_is_empty_and_verifies_nothing() -> None:
    header = signature_header([], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert header == ""
    assert not verify(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, header)


@pytest.mark.parametrize(
    ("webhook_id", "timestamp", "body"),
    [
        pytest.param(VECTOR_ID, VECTOR_TIMESTAMP, b'{"test": 2432232315}', id="tampered-body"),
        pytest.param(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY + b" ", id="body-trailing-space"),
        pytest.param(VECTOR_ID, VECTOR_TIMESTAMP, b"", id="empty-body"),
        pytest.param("msg_p5jXN8AQM9LWM0D4loKWxJeK", VECTOR_TIMESTAMP, VECTOR_BODY, id="tampered-id"),
        pytest.param(VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_BODY, id="tampered-timestamp"),
        pytest.param(VECTOR_ID, VECTOR_TIMESTAMP - 1, VECTOR_BODY, id="earlier-timestamp"),
    ],
)
def test_verify_rejects_tampered_content(webhook_id: str, timestamp: int, body: bytes) -> None:
    assert not verify(VECTOR_SECRET, webhook_id, timestamp, body, VECTOR_SIGNATURE)


def test_verify_rejects_wrong_secret() -> None:
    assert not verify(generate_secret(), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, VECTOR_SIGNATURE)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("", id="empty"),
        pytest.param("v1,", id="empty-digest"),
        pytest.param(VECTOR_SIGNATURE.removeprefix("v1,"), id="no-version"),
        pytest.param("v2," + VECTOR_SIGNATURE.removeprefix("v1,"), id="other-version"),
        pytest.param(VECTOR_SIGNATURE[:-2] + "A=", id="digest-altered"),
        pytest.param(VECTOR_SIGNATURE + "x", id="digest-extended"),
    ],
)
def test_verify_rejects_malformed_or_wrong_headers(header: str) -> None:
    assert not verify(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, header)


def test_verify_finds_the_valid_signature_among_others_and_extra_spaces() -> None:
    other = sign(decode_secret(generate_secret()), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert verify(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, f"{other} {VECTOR_SIGNATURE}")
    assert verify(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, f"{other}  {VECTOR_SIGNATURE} ")


def test_signature_is_hmac_sha256_over_id_timestamp_body() -> None:
    import hashlib
    import hmac

    key = b"k" * 32
    expected = hmac.new(key, b"msg_x.42.payload", hashlib.sha256).digest()
    assert sign(key, "msg_x", 42, b"payload") == "v1," + base64.b64encode(expected).decode()


def test_the_previous_secret_stops_signing_when_its_grace_period_ends() -> None:
    """What the sender puts on the wire around the rotation's expiry (the clock is the argument)."""
    import datetime as dt

    import orjson

    from hookstream.core.model import DeliveryTask
    from hookstream.core.webhooks import Webhook
    from hookstream.sender.http import build_headers

    old, new = generate_secret(), generate_secret()
    expires = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
    hook = Webhook("wh_1", "org_1", "https://example.com/h", frozenset({"order.created"}), frozenset({"s1"}), True,
                   decode_secret(new), decode_secret(old), expires)
    body = orjson.dumps({"id": "evt_1"})
    task = DeliveryTask(1, "wh_1", "org_1", "evt_1", "order.created", "s1", "2026-12-01T00:00:00Z", 1, 0, False,
                        body.decode())
    during = build_headers(task, hook, body, expires - dt.timedelta(seconds=1))
    after = build_headers(task, hook, body, expires + dt.timedelta(microseconds=1))
    assert len(during["webhook-signature"].split(" ")) == 2
    assert verify(old, "evt_1", int(during["webhook-timestamp"]), body, during["webhook-signature"])
    assert len(after["webhook-signature"].split(" ")) == 1
    assert verify(new, "evt_1", int(after["webhook-timestamp"]), body, after["webhook-signature"])
    assert not verify(old, "evt_1", int(after["webhook-timestamp"]), body, after["webhook-signature"])
