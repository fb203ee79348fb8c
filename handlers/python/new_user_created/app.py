"""Handles `new-user-created`: checks the user the producer published, asks the producer to issue
the user's first token, and announces the user on the event stream.

Dispositions: malformed JSON, missing or invalid fields -> `reject`; producer unreachable, timed
out, busy with the same idempotency key (409), 408, 429 or 5xx -> `retry`; any other non-201
answer -> `reject`.
"""

from dataclasses import asdict, dataclass

from kafka_wasm import (
    Err,
    KafkaRecord,
    Method,
    call_failed,
    call_json,
    exports,
    is_rfc3339_utc,
    is_uuid,
    json_value,
    publish_json,
    quoted,
    reject,
    status_failed,
)


@dataclass
class User:
    """The user as the producer publishes it."""

    id: str
    name: str
    email: str
    created_at: str


class RecordHandler(exports.RecordHandler):
    def handle(self, record: KafkaRecord) -> None:
        user = json_value(record, User)
        if not is_uuid(user.id):
            raise reject(f"id {quoted(user.id)} is not a UUID")
        if not user.name.strip():
            raise reject("name is empty")
        if "@" not in user.email:
            raise reject(f"email {quoted(user.email)} is not an address")
        if not is_rfc3339_utc(user.created_at):
            raise reject(f"created_at {quoted(user.created_at)} is not an RFC 3339 UTC timestamp")
        try:
            response = call_json(Method.POST, "/producer-svc/tokens", {"user_id": user.id})
        except Err as e:
            raise call_failed("issuing the first token", e.value) from None
        if response.status != 201:
            raise status_failed("issuing the first token", response)
        publish_json("user-created", asdict(user))
