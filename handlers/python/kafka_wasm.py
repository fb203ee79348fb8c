"""Helpers for writing `kafka-wasm:handler` components in Python with componentize-py.

The same helpers as the Rust SDK (`handlers/sdk`). A handler is a module (``app.py``) that
defines ``RecordHandler``; dispositions are exceptions::

    from kafka_wasm import KafkaRecord, exports, json_value, reject

    @dataclass
    class User:
        id: str
        name: str

    class RecordHandler(exports.RecordHandler):
        def handle(self, record: KafkaRecord) -> None:
            user = json_value(record, User)
            if not user.name.strip():
                raise reject("name is empty")

Returning is ``ok``; ``raise retry(...)`` is a transient failure (the host delivers the record
again later), ``raise reject(...)`` a permanent one (the host dead-letters it). Any other
exception traps: the host counts it as a transient failure and replaces the instance.

Build with ``componentize-py -d wit -w handler componentize app -p <handler dir> -p
handlers/python -o <name>.wasm`` (``cargo xtask build-handlers`` does it).
"""

import dataclasses
import json
import re
import typing
from typing import Any, Optional, Type, TypeVar

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import producer_api, runtime
from wit_world.imports.producer_api import (
    CallError,
    CallError_Denied,
    CallError_Timeout,
    CallError_TooLarge,
    CallError_Unreachable,
    Method,
    Request,
    Response,
)
from wit_world.imports.runtime import Level, log, publish_event
from wit_world.imports.types import HandlerError_Reject, HandlerError_Retry, KafkaRecord

__all__ = [
    "CallError",
    "Err",
    "KafkaRecord",
    "Level",
    "Method",
    "Request",
    "Response",
    "call_failed",
    "call_json",
    "exports",
    "from_json",
    "is_rfc3339_utc",
    "is_uuid",
    "json_value",
    "log",
    "producer_api",
    "publish_event",
    "publish_json",
    "quoted",
    "reject",
    "retry",
    "status_failed",
]

T = TypeVar("T")


def retry(reason: str) -> Err:
    """A transient failure, to raise: the host will deliver the record again later."""
    return Err(HandlerError_Retry(reason))


def reject(reason: str) -> Err:
    """A permanent failure, to raise: the host dead-letters the record."""
    return Err(HandlerError_Reject(reason))


def _dumps(value: Any) -> str:
    """Compact JSON, as serde_json writes it (so every language sends the same bytes)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_FOUND = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
_EXPECTED = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}


def _type_name(value: Any) -> str:
    return "null" if value is None else _FOUND.get(type(value), type(value).__name__)


def _check(name: str, want: Any, value: Any) -> Any:
    """`value` if it has type `want` (str, bool, int, float or Optional of one)."""
    args = typing.get_args(want)
    if type(None) in args:
        if value is None:
            return None
        (want,) = [a for a in args if a is not type(None)]
    ok = type(value) is want or (want is float and type(value) is int)
    if not ok:
        expected = _EXPECTED.get(want, want.__name__)
        raise ValueError(f"invalid type: {_type_name(value)}, expected {expected} in field `{name}`")
    return value


# Nesting deeper than serde_json's limit is refused before parsing: CPython's parser recurses, and
# the host's wasm stack runs out (a trap, so a retry) long before its recursion limit.
_MAX_DEPTH = 128
_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _too_deep(data: bytes) -> bool:
    if data.count(b"[") + data.count(b"{") <= _MAX_DEPTH:
        return False
    depth = 0
    for token in _NESTING.finditer(data):
        c = token.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > _MAX_DEPTH:
                return True
        elif c in (b"]", b"}"):
            depth -= 1
    return False


def from_json(data: bytes, shape: Type[T], *, strict: bool = True) -> T:
    """Parses `data` as JSON into the dataclass `shape`, whose fields are str, bool, int, float or
    Optional of one (an Optional field may be missing). Unknown fields are an error when `strict`.
    Raises ValueError saying what is wrong."""
    if _too_deep(data):
        raise ValueError("recursion limit exceeded")
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError(f"invalid type: {_type_name(value)}, expected an object")
    hints = typing.get_type_hints(shape)
    fields = [f.name for f in dataclasses.fields(shape)]
    if strict:
        for key in value:
            if key not in hints:
                raise ValueError(f"unknown field `{key}`, expected one of {', '.join(fields)}")
    args = {}
    for name in fields:
        if name not in value and type(None) not in typing.get_args(hints[name]):
            raise ValueError(f"missing field `{name}`")
        args[name] = _check(name, hints[name], value.get(name))
    return shape(**args)


def json_value(record: KafkaRecord, shape: Type[T]) -> T:
    """The record's value parsed as JSON into the dataclass `shape` (see `from_json`, strict);
    raises a `reject` whose reason says what is wrong for a tombstone or a malformed value."""
    if record.value is None:
        raise reject("the record has no value (tombstone)")
    try:
        return from_json(record.value, shape)
    except ValueError as e:
        raise reject(f"malformed value: {e}") from None


def call_json(method: Method, path: str, body: Any) -> Response:
    """Sends `body` as JSON to the producer service at `path` with `method`. Raises
    ``Err(CallError)`` when the call produced no response (see `call_failed`)."""
    try:
        encoded = _dumps(body).encode()
    except (TypeError, ValueError) as e:
        raise Err(CallError_Denied(f"cannot encode the body: {e}")) from None
    return producer_api.call(Request(method, path, [("content-type", "application/json")], encoded))


def call_failed(what: str, error: CallError) -> Err:
    """The disposition a failed producer call implies: a `retry` when the producer may recover
    (unreachable, timed out), a `reject` when a retry cannot help (the host denied the call, the
    answer is too large)."""
    if isinstance(error, CallError_Unreachable):
        return retry(f"{what}: producer unreachable: {error.value}")
    if isinstance(error, CallError_Timeout):
        return retry(f"{what}: producer timed out")
    if isinstance(error, CallError_Denied):
        return reject(f"{what}: call denied by the host: {error.value}")
    if isinstance(error, CallError_TooLarge):
        return reject(f"{what}: producer answer over {error.value} bytes")
    raise TypeError(f"not a call error: {error!r}")


def status_failed(what: str, response: Response) -> Err:
    """The disposition an unexpected HTTP status implies: a `retry` for 5xx, 408, 429 and 409 (the
    producer may recover; its 409 means an earlier attempt with the same Idempotency-Key is still
    in progress), a `reject` for any other status (the request itself is wrong)."""
    body = response.body.decode("utf-8", "replace")[:200]
    reason = f"{what}: producer answered {response.status}: {body}"
    if response.status >= 500 or response.status in (408, 409, 429):
        return retry(reason)
    return reject(reason)


def publish_json(kind: str, payload: Any) -> None:
    """Publishes an event whose payload is `payload` as JSON."""
    try:
        text = _dumps(payload)
    except (TypeError, ValueError) as e:
        log(Level.ERROR, f"cannot encode the {kind} event: {e}")
        return
    publish_event(kind, text)


_RFC3339_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]*)?(Z|z|\+00:00)")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def is_rfc3339_utc(s: str) -> bool:
    """Whether `s` looks like an RFC 3339 UTC timestamp (``2026-11-26T13:52:00Z``, fractional
    seconds allowed). A syntactic check: the producer is the authority on the instant itself."""
    return _RFC3339_UTC.fullmatch(s) is not None


def is_uuid(s: str) -> bool:
    """Whether `s` is a UUID in its hyphenated text form."""
    return _UUID.fullmatch(s) is not None


def quoted(s: Optional[str]) -> str:
    """`s` as a quoted string for a reason (``null`` for None)."""
    return _dumps(s)
