// The daemon's HTTP API (docs/API.md) as the dashboard uses it: JSON in,
// JSON out, a server error turned into an Error carrying its message, and a
// count of requests in flight for the progress indicator.

/** An error answer of the daemon: HTTP status, its code, message and field. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(field ? `${message} (field: ${field})` : message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
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
      throw new ApiError(response.status, "bad_response", `${response.status}: ${text.slice(0, 300)}`);
    }
    if (!response.ok) {
      const e = parsed.error || {};
      throw new ApiError(response.status, e.code, `${response.status} ${e.code || ""}: ${e.message || text}`, e.field);
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
