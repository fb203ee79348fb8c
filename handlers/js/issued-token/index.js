/**
 * Handles `issued-token`: has the producer verify each issued token and announces verified tokens
 * on the event stream.
 *
 * Dispositions: malformed JSON or missing fields -> `reject`; token invalid, expired, or issued to
 * another user than the record says -> `reject`; producer unreachable, timed out, busy with the
 * same idempotency key (409), 408, 429 or 5xx -> `retry`.
 */

import {
  callFailed,
  callJson,
  fromJson,
  isRfc3339Utc,
  isUuid,
  jsonValue,
  publishJson,
  quoted,
  reject,
  retry,
  statusFailed,
} from "../kafka-wasm.js";

/** The token as the producer publishes it. */
const ISSUED_TOKEN = { user_id: "string", token: "string", issued_at: "string", expires_at: "string" };

/** The producer's verdict (other fields are ignored). */
const VERDICT = { valid: "boolean", user_id: "string?", reason: "string?" };

export const recordHandler = {
  handle(record) {
    const issued = jsonValue(record, ISSUED_TOKEN);
    if (!isUuid(issued.user_id)) throw reject(`user_id ${quoted(issued.user_id)} is not a UUID`);
    if (!issued.token) throw reject("token is empty");
    for (const field of ["issued_at", "expires_at"]) {
      if (!isRfc3339Utc(issued[field])) {
        throw reject(`${field} ${quoted(issued[field])} is not an RFC 3339 UTC timestamp`);
      }
    }
    let response;
    try {
      response = callJson("post", "/producer-svc/tokens/verify", { token: issued.token });
    } catch (e) {
      throw callFailed("verifying the token", e);
    }
    if (response.status !== 200) throw statusFailed("verifying the token", response);
    let verdict;
    try {
      verdict = fromJson(response.body, VERDICT, { strict: false });
    } catch (e) {
      throw retry(`verifying the token: unreadable producer answer: ${e.message}`);
    }
    if (!verdict.valid) throw reject(`token is not valid: ${verdict.reason ?? "no reason given"}`);
    if (verdict.user_id !== issued.user_id) {
      throw reject(`token belongs to user ${quoted(verdict.user_id)}, but the record says ${quoted(issued.user_id)}`);
    }
    publishJson("token-verified", { user_id: issued.user_id, expires_at: issued.expires_at });
  },
};
