/**
 * Helpers for writing `kafka-wasm:handler` components in JavaScript with ComponentizeJS.
 *
 * The same helpers as the Rust SDK (`handlers/sdk`). A handler is an ES module that exports
 * `recordHandler` with a `handle(record)` function; dispositions are exceptions:
 *
 *     import { jsonValue, reject } from "../kafka-wasm.js";
 *
 *     export const recordHandler = {
 *       handle(record) {
 *         const user = jsonValue(record, { id: "string", name: "string" });
 *         if (!user.name.trim()) throw reject("name is empty");
 *       },
 *     };
 *
 * Returning is `ok`; `throw retry(...)` is a transient failure (the host delivers the record
 * again later), `throw reject(...)` a permanent one (the host dead-letters it). Any other
 * exception traps: the host counts it as a transient failure and replaces the instance.
 *
 * Build with `componentize-js <handler>/index.js --wit wit --world-name handler -o <name>.wasm`,
 * run from this directory so that the import of this module resolves (`cargo xtask
 * build-handlers` does it).
 */

import { call } from "kafka-wasm:handler/producer-api@0.2.0";
import { log, publishEvent } from "kafka-wasm:handler/runtime@0.2.0";

export { call, log, publishEvent };

/** Why a handler did not finish a record; ComponentizeJS returns its `payload` as the error. */
export class HandlerError extends Error {
  constructor(tag, reason) {
    super(reason);
    this.name = `HandlerError(${tag})`;
    this.payload = { tag, val: reason };
  }
}

/** A transient failure, to throw: the host will deliver the record again later. */
export function retry(reason) {
  return new HandlerError("retry", reason);
}

/** A permanent failure, to throw: the host dead-letters the record. */
export function reject(reason) {
  return new HandlerError("reject", reason);
}

const typeName = (v) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v);

/**
 * Parses `bytes` (UTF-8 JSON) as an object of the fields `shape` names, each with its type:
 * `"string"`, `"boolean"` or `"number"`, with a trailing `?` when it may be missing or null.
 * Unknown fields are an error when `strict`. Throws an Error saying what is wrong.
 */
export function fromJson(bytes, shape, { strict = true } = {}) {
  const value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  if (typeName(value) !== "object") {
    throw new Error(`invalid type: ${typeName(value)}, expected an object`);
  }
  if (strict) {
    for (const key of Object.keys(value)) {
      if (!Object.hasOwn(shape, key)) {
        throw new Error(`unknown field \`${key}\`, expected one of ${Object.keys(shape).join(", ")}`);
      }
    }
  }
  const out = {};
  for (const [name, spec] of Object.entries(shape)) {
    const optional = spec.endsWith("?");
    const want = optional ? spec.slice(0, -1) : spec;
    const field = Object.hasOwn(value, name) ? value[name] : undefined;
    if (field === undefined || field === null) {
      if (optional) {
        out[name] = null;
        continue;
      }
      if (field === undefined) throw new Error(`missing field \`${name}\``);
    }
    if (typeName(field) !== want) {
      throw new Error(`invalid type: ${typeName(field)}, expected a ${want} in field \`${name}\``);
    }
    out[name] = field;
  }
  return out;
}

/**
 * The record's value parsed as JSON (see `fromJson`, strict); throws a `reject` whose reason
 * says what is wrong for a tombstone or a malformed value.
 */
export function jsonValue(record, shape) {
  if (record.value == null) throw reject("the record has no value (tombstone)");
  try {
    return fromJson(record.value, shape);
  } catch (e) {
    throw reject(`malformed value: ${e.message}`);
  }
}

/**
 * Sends `body` as JSON to the producer service at `path` with `method` (`"get"`, `"post"`,
 * ...). Returns the response (`status`, `headers`, `body`); throws when the call produced no
 * response (see `callFailed`).
 */
export function callJson(method, path, body) {
  return call({
    method,
    path,
    headers: [["content-type", "application/json"]],
    body: new TextEncoder().encode(JSON.stringify(body)),
  });
}

/**
 * The disposition a failed producer call implies (`error` is what `call` or `callJson` threw):
 * a `retry` when the producer may recover (unreachable, timed out), a `reject` when a retry
 * cannot help (the host denied the call, the answer is too large).
 */
export function callFailed(what, error) {
  const e = error?.payload ?? error;
  switch (e?.tag) {
    case "unreachable":
      return retry(`${what}: producer unreachable: ${e.val}`);
    case "timeout":
      return retry(`${what}: producer timed out`);
    case "denied":
      return reject(`${what}: call denied by the host: ${e.val}`);
    case "too-large":
      return reject(`${what}: producer answer over ${e.val} bytes`);
    default:
      throw error;
  }
}

/**
 * The disposition an unexpected HTTP status implies: a `retry` for 5xx, 408, 429 and 409 (the
 * producer may recover; its 409 means an earlier attempt with the same Idempotency-Key is still
 * in progress), a `reject` for any other status (the request itself is wrong).
 */
export function statusFailed(what, response) {
  const body = Array.from(new TextDecoder().decode(response.body)).slice(0, 200).join("");
  const reason = `${what}: producer answered ${response.status}: ${body}`;
  const transient = response.status >= 500 || [408, 409, 429].includes(response.status);
  return transient ? retry(reason) : reject(reason);
}

/** Publishes an event whose payload is `payload` as JSON. */
export function publishJson(kind, payload) {
  let text;
  try {
    text = JSON.stringify(payload);
  } catch (e) {
    log("error", `cannot encode the ${kind} event: ${e.message}`);
    return;
  }
  publishEvent(kind, text);
}

const RFC3339_UTC = /^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]*)?(Z|z|\+00:00)$/;
const UUID = /^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$/;

/**
 * Whether `s` looks like an RFC 3339 UTC timestamp (`2026-11-26T13:52:00Z`, fractional seconds
 * allowed). A syntactic check: the producer is the authority on the instant itself.
 */
export function isRfc3339Utc(s) {
  return RFC3339_UTC.test(s);
}

/** Whether `s` is a UUID in its hyphenated text form. */
export function isUuid(s) {
  return UUID.test(s);
}

/** `s` as a quoted string for a reason (`null` for null). */
export function quoted(s) {
  return JSON.stringify(s ?? null);
}
