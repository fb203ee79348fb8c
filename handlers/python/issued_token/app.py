"""Handles `issued-token`: has the producer verify each issued token and announces verified tokens
on the event stream.

Dispositions: malformed JSON or missing fields -> `reject`; token invalid, expired, or issued to
another user than the record says -> `reject`; producer unreachable, timed out, busy with the
same idempotency key (409), 408, 429 or 5xx -> `retry`.
"""

from dataclasses import dataclass
from typing import Optional

from kafka_wasm import (
    Err,
    KafkaRecord,
    Method,
    call_failed,
    call_json,
    exports,
    from_json,
    is_rfc3339_utc,
    is_uuid,
    json_value,
    publish_json,
    quoted,
    reject,
    retry,
    status_failed,
)


@dataclass
class IssuedToken:
    """The token as the producer publishes it."""

    user_id: str
    token: str
    issued_at: str
    expires_at: str


@dataclass
class Verdict:
    """The producer's verdict (other fields are ignored)."""

    valid: bool
    user_id: Optional[str] = None
    reason: Optional[str] = None


class RecordHandler(exports.RecordHandler):
    def handle(self, record: KafkaRecord) -> None:
        issued = json_value(record, IssuedToken)
        if not is_uuid(issued.user_id):
            raise reject(f"user_id {quoted(issued.user_id)} is not a UUID")
        if not issued.token:
            raise reject("token is empty")
        for field in ("issued_at", "expires_at"):
            value = getattr(issued, field)
            if not is_rfc3339_utc(value):
                raise reject(f"{field} {quoted(value)} is not an RFC 3339 UTC timestamp")
        try:
            response = call_json(Method.POST, "/producer-svc/tokens/verify", {"token": issued.token})
        except Err as e:
            raise call_failed("verifying the token", e.value) from None
        if response.status != 200:
            raise status_failed("verifying the token", response)
        try:
            verdict = from_json(response.body, Verdict, strict=False)
        except ValueError as e:
            raise retry(f"verifying the token: unreadable producer answer: {e}") from None
        if not verdict.valid:
            reason = verdict.reason if verdict.reason is not None else "no reason given"
            raise reject(f"token is not valid: {reason}")
        if verdict.user_id != issued.user_id:
            raise reject(
                f"token belongs to user {quoted(verdict.user_id)}, but the record says {quoted(issued.user_id)}"
            )
        publish_json("token-verified", {"user_id": issued.user_id, "expires_at": issued.expires_at})
