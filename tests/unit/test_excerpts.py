"""Response bodies are data (issue 11): whatever bytes an endpoint sends, the excerpt is text that
PostgreSQL stores, within the cap, decompressed when the endpoint compressed it, without a zip bomb."""

from __future__ import annotations

import gzip
import zlib

import orjson
from hypothesis import given
from hypothesis import strategies as st

from hookstream.core.text import storable_text
from hookstream.sender.http import decompress_bounded, storable_error

CAP = 4096


def storable(text: str) -> bool:
    """What PostgreSQL text accepts: valid UTF-8 without U+0000."""
    return "\x00" not in text and text.encode("utf-8", "strict") is not None


@given(st.binary(max_size=3 * CAP), st.integers(min_value=0, max_value=CAP))
def test_any_bytes_become_storable_text_within_the_cap(raw: bytes, cap: int) -> None:
    text = storable_text(raw, cap)
    assert storable(text)
    assert len(text.encode()) <= cap


def test_nul_and_invalid_utf8_become_the_replacement_character() -> None:
    assert storable_text(b"ok\x00", CAP) == "ok\ufffd"
    assert storable_text(b"\xff\xfeok", CAP) == "\ufffd\ufffdok"
    assert storable_text("h\u00e9llo".encode(), CAP) == "h\u00e9llo"


def test_a_character_cut_by_the_cap_is_dropped_not_mangled() -> None:
    assert storable_text("aé".encode(), 2) == "a"


def test_gzip_bomb_decompresses_to_the_cap_only() -> None:
    bomb = gzip.compress(b"\x00" * 50_000_000)
    out = decompress_bounded(bomb[:CAP], "gzip", CAP)
    assert len(out) == CAP


def test_both_meanings_of_deflate_are_decompressed() -> None:
    assert decompress_bounded(zlib.compress(b"hello"), "deflate", CAP) == b"hello"
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decompress_bounded(raw.compress(b"hello") + raw.flush(), "deflate", CAP) == b"hello"


def test_a_body_that_lies_about_its_encoding_stays_as_it_came() -> None:
    assert decompress_bounded(b"not gzip at all", "gzip", CAP) == b"not gzip at all"


@given(st.text(max_size=2000))
def test_errors_are_storable(error: str) -> None:
    assert storable(storable_error(error))


def test_captured_response_headers_are_capped_and_storable():
    from multidict import CIMultiDict

    from hookstream.sender.http import MAX_RESPONSE_HEADERS, capture_headers

    hostile = CIMultiDict([("X-Nul", "a\x00b"), ("X-Surrogate", "\udcff"), ("Set-Cookie", "a=1"),
                           ("Set-Cookie", "b=2"), ("X-Long", "é" * 1000), ("N" * 500, "v")]
                          + [(f"x-{i}", "v") for i in range(100)])
    captured = capture_headers(hostile)
    assert len(captured) == MAX_RESPONSE_HEADERS
    assert captured[0] == ("x-nul", "a\ufffdb") and captured[1] == ("x-surrogate", "?")
    assert captured[2:4] == (("set-cookie", "a=1"), ("set-cookie", "b=2"))  # repeated headers kept in order
    assert len(captured[4][1].encode()) <= 300 and captured[4][1] == "é" * 150
    assert captured[5] == ("n" * 100, "v")
    orjson.dumps(captured)  # valid for jsonb: no lone surrogate, no NUL
