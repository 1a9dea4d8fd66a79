"""Payload and identifier checks (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardflow.engine.codec import check_identifier, encode_payload
from shardflow.errors import InvalidWorkflowId, PayloadNotSerializable, PayloadTooLarge

MiB = 1024 * 1024

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_value_is_accepted_and_round_trips_or_is_rejected(value: object) -> None:
    try:
        encoded = encode_payload(value, max_bytes=MiB, what="input")
    except PayloadNotSerializable as exc:
        assert "NUL" in str(exc) or "Unicode" in str(exc)
        return
    assert encoded.value == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1: "a"}, "dict key"),
        ({"a": object()}, "not JSON"),
        ("nul\x00byte", "NUL"),
        ({"k\x00": 1}, "NUL"),
        (float("nan"), "JSON cannot hold"),
        (float("inf"), "JSON cannot hold"),
        ("\ud800", "Unicode"),
        ({1, 2}, "set"),
        (b"bytes", "bytes"),
    ],
)
def test_rejected_payloads(value: object, message: str) -> None:
    with pytest.raises(PayloadNotSerializable, match=message):
        encode_payload(value, max_bytes=MiB, what="input")


def test_deep_nesting_rejected() -> None:
    value: object = 1
    for _ in range(200):
        value = [value]
    with pytest.raises(PayloadNotSerializable, match="nested"):
        encode_payload(value, max_bytes=MiB, what="input")


def test_size_limit() -> None:
    encode_payload("x" * 100, max_bytes=102, what="input")
    with pytest.raises(PayloadTooLarge, match="max_payload_bytes"):
        encode_payload("x" * 101, max_bytes=102, what="input")


def test_tuples_become_lists() -> None:
    assert encode_payload((1, 2), max_bytes=MiB, what="input").value == [1, 2]


@pytest.mark.parametrize("bad", ["", "   ", "x" * 201, "a\x00b", "\udcff", 42, None])
def test_bad_identifiers(bad: object) -> None:
    with pytest.raises(InvalidWorkflowId):
        check_identifier(bad, what="workflow_id", max_length=200)


def test_identifiers_with_sql_metacharacters_are_fine() -> None:
    for ok in ["'; DROP TABLE workflows; --", "%(x)s", "{schema}", "ünï 🚀", "x" * 200]:
        assert check_identifier(ok, what="workflow_id", max_length=200) == ok
