// The daemon's HTTP API (docs/API.md) as the dashboard uses it: JSON in,
// JSON out, a server error turned into an Error carrying its message, and a
// count of requests in flight for the progress indicator.

// Every error the daemon answers, [HTTP status, error.code]: the rows of
// SRV_ERRORS in server/reply.h, in its order (tests/integration/test_error_table.py
// checks them). A body that is not the daemon's JSON gets its status's first code.
export const ERRORS = Object.freeze([
  [400, "bad_request"],
  [401, "unauthorized"],
  [403, "forbidden"],
  [404, "not_found"],
  [405, "method_not_allowed"],
  [406, "not_acceptable"],
  [409, "conflict"],
  [409, "cancelled"],
  [413, "too_large"],
  [415, "unsupported_media_type"],
  [422, "unprocessable"],
  [429, "rate_limited"],
  [499, "client_closed"],
  [500, "internal"],
  [503, "unavailable"],
  [507, "insufficient_storage"],
].map((row) => Object.freeze(row)));

// The codes whose request may simply be sent again, after Retry-After.
const RETRY_CODES = new Set(["rate_limited", "unavailable"]);

/** The code of a status when the body does not say (the first row's), or undefined. */
export const codeOfStatus = (status) => ERRORS.find(([s]) => s === status)?.[1];

/** An error answer of the daemon: HTTP status, its code, message and field;
 *  retryAfter (seconds of Retry-After, or null) when the code is one to retry,
 *  which the message then ends with a hint about. */
export class ApiError extends Error {
  constructor(status, code, message, field, retryAfter = null) {
    const retry = RETRY_CODES.has(code);
    const hint = !retry ? "" : retryAfter === null ? " (try again shortly)" : ` (try again in ${retryAfter} s)`;
    super((field ? `${message} (field: ${field})` : message) + hint);
    this.status = status;
    this.code = code;
    this.field = field;
    this.retryAfter = retry ? retryAfter : null;
  }
}

/** Retry-After in seconds, or null when absent or not a number of seconds. */
function retryAfterOf(response) {
  const value = Number.parseFloat(response.headers.get("Retry-After") ?? "");
  return Number.isFinite(value) && value >= 0 ? value : null;
}

const listeners = new Set();
let inFlight = 0;

/** onBusy(fn): fn(count) runs whenever the number of requests (or tasks
 *  of busy()) in flight changes. */
export function onBusy(fn) {
  listeners.add(fn);
}

function setInFlight(delta) {
  inFlight += delta;
  for (const fn of listeners) fn(inFlight);
}

/** Runs the async fn as one task in flight (covering the gaps between its
 *  requests); returns its result. */
export async function busy(fn) {
  setInFlight(+1);
  try {
    return await fn();
  } finally {
    setInFlight(-1);
  }
}

/** method path [JSON body] -> parsed JSON; throws ApiError. */
export async function request(method, path, body) {
  setInFlight(+1);
  try {
    const response = await fetch(path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not the daemon's JSON (a proxy's page): the status says what it was
      const code = response.ok ? "bad_response" : codeOfStatus(response.status) || "bad_response";
      throw new ApiError(response.status, code, `${response.status} ${code}: ${text.slice(0, 300)}`,
        undefined, retryAfterOf(response));
    }
    if (!response.ok) {
      const e = parsed.error || {};
      const code = e.code || codeOfStatus(response.status);
      throw new ApiError(response.status, code, `${response.status} ${code || ""}: ${e.message || text}`, e.field,
        retryAfterOf(response));
    }
    return parsed;
  } catch (e) {
    if (e instanceof ApiError) throw e;
    throw new ApiError(0, "network", `the daemon did not answer ${path}: ${e.message}`);
  } finally {
    setInFlight(-1);
  }
}

/** GET path -> parsed JSON; throws ApiError. */
export const get = (path) => request("GET", path);

/** POST path with a JSON body -> parsed JSON; throws ApiError. */
export const post = (path, body) => request("POST", path, body);

/** A JSON tensor {shape, dtype, data: nested lists} -> {shape, data: Float32Array}
 *  (row-major; the strings "-inf", "inf", "nan" become numbers). */
export function tensor(t) {
  const flat = t.data.flat(Infinity).map((v) => (typeof v === "string" ? Number(v.replace("inf", "Infinity")) : v));
  return { shape: t.shape, data: Float32Array.from(flat) };
}
