"""Payload and identifier checks: everything is validated before anything is written.

Payloads are plain JSON: dict (str keys), list/tuple, str, int, float (finite), bool, None.
They are stored as ``json`` text, so what is accepted comes back exactly (key order and
number spelling included); tuples come back as lists.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from typing import Any

from shardflow.errors import (
    InvalidInput,
    InvalidWorkflowId,
    PayloadNotSerializable,
    PayloadTooLarge,
)

MAX_DEPTH = 100
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class EncodedPayload:
    """A validated payload: ``text`` is what is stored, ``value`` what a replay will see."""

    text: str | None
    value: Any


def encode_payload(value: Any, *, max_bytes: int, what: str) -> EncodedPayload:
    """Validate and encode ``value``; raise a typed InvalidInput saying what to fix."""
    _check_structure(value, what)
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise PayloadNotSerializable(f"{what} is not JSON-serialisable: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{what} is {size} bytes encoded, above the limit of {max_bytes} bytes; store large "
            "data elsewhere and pass a reference, or raise limits.max_payload_bytes"
        )
    return EncodedPayload(text=text, value=json.loads(text))


def _check_structure(value: Any, what: str) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PayloadNotSerializable(
                f"{what} is nested deeper than {MAX_DEPTH} levels; flatten it"
            )
        if isinstance(item, str):
            _check_text(item, what)
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                raise PayloadNotSerializable(f"{what} contains {item!r}, which JSON cannot hold")
        elif isinstance(item, _SCALARS):
            continue
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise PayloadNotSerializable(
                        f"{what} has a dict key {key!r} of type {type(key).__name__}; JSON keys "
                        "are strings, convert it first"
                    )
                _check_text(key, what)
                stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        else:
            raise PayloadNotSerializable(
                f"{what} contains a {type(item).__name__}, which is not JSON; pass dicts, lists, "
                "strings, numbers, booleans or None (e.g. dataclasses.asdict(obj))"
            )


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        raise PayloadNotSerializable(f"{what} contains a NUL character, which cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadNotSerializable(
            f"{what} contains text that is not valid Unicode (a lone surrogate)"
        ) from None


def check_identifier(
    value: Any, *, what: str, max_length: int, error: type[InvalidInput] = InvalidWorkflowId
) -> str:
    """Validate a workflow id, routing key or workflow name; return it unchanged."""
    if not isinstance(value, str):
        raise error(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise error(f"{what} is empty; pass a non-blank string")
    if len(value) > max_length:
        raise error(
            f"{what} is {len(value)} characters, above the limit of {max_length}; use a shorter "
            "one (a hash of a long natural key works)"
        )
    if "\x00" in value:
        raise error(f"{what} contains a NUL character; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is not valid Unicode (a lone surrogate)") from None
    return value


# Signal names and event keys starting with this are shardflow's own.
RESERVED_PREFIX = "shardflow."
MAX_NAME_LENGTH = 200


def check_name(value: Any, *, what: str) -> str:
    """Validate a signal name or event key: a short non-blank string outside shardflow's
    reserved ``shardflow.`` prefix; return it unchanged."""
    check_identifier(value, what=what, max_length=MAX_NAME_LENGTH, error=InvalidInput)
    if value.startswith(RESERVED_PREFIX):
        raise InvalidInput(
            f"{what} {value!r} starts with {RESERVED_PREFIX!r}, which shardflow reserves for "
            "its own; choose another name"
        )
    return str(value)


_MAX_ERROR_TEXT = 8192


def encode_error(exc: BaseException) -> dict[str, Any]:
    """A JSON record of an exception, bounded in size so it can always be stored."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": _bounded(str(exc)),
        "traceback": _bounded(tb),
    }


def error_text(error: dict[str, Any]) -> str:
    """Encode an error record (made by :func:`encode_error`) for storage."""
    return json.dumps(error, ensure_ascii=False).replace("\\u0000", "")


def _bounded(text: str) -> str:
    text = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    if len(text) > _MAX_ERROR_TEXT:
        return text[: _MAX_ERROR_TEXT // 2] + "\n...\n" + text[-_MAX_ERROR_TEXT // 2 :]
    return text
