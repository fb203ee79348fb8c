/**
 * Handles `new-user-created`: checks the user the producer published, asks the producer to issue
 * the user's first token, and announces the user on the event stream.
 *
 * Dispositions: malformed JSON, missing or invalid fields -> `reject`; producer unreachable, timed
 * out, busy with the same idempotency key (409), 408, 429 or 5xx -> `retry`; any other non-201
 * answer -> `reject`.
 */

import {
  callFailed,
  callJson,
  isRfc3339Utc,
  isUuid,
  jsonValue,
  publishJson,
  quoted,
  reject,
  statusFailed,
} from "../kafka-wasm.js";

/** The user as the producer publishes it. */
const USER = { id: "string", name: "string", email: "string", created_at: "string" };

export const recordHandler = {
  handle(record) {
    const user = jsonValue(record, USER);
    if (!isUuid(user.id)) throw reject(`id ${quoted(user.id)} is not a UUID`);
    if (!user.name.trim()) throw reject("name is empty");
    if (!user.email.includes("@")) throw reject(`email ${quoted(user.email)} is not an address`);
    if (!isRfc3339Utc(user.created_at)) {
      throw reject(`created_at ${quoted(user.created_at)} is not an RFC 3339 UTC timestamp`);
    }
    let response;
    try {
      response = callJson("post", "/producer-svc/tokens", { user_id: user.id });
    } catch (e) {
      throw callFailed("issuing the first token", e);
    }
    if (response.status !== 201) throw statusFailed("issuing the first token", response);
    const { id, name, email, created_at } = user;
    publishJson("user-created", { id, name, email, created_at });
  },
};
