// What both test files share: where the server is (from the environment
// cairn/tests/js_clients.rs sets), tokens of the demo realm, and the HTTP
// API.

export const BASE = process.env.CAIRN_BASE;
export const DEMO_PASSWORD = process.env.CAIRN_DEMO_PASSWORD;
if (!BASE || !DEMO_PASSWORD) {
  throw new Error(
    'set CAIRN_BASE (host:port of a running `cairn up`) and CAIRN_DEMO_PASSWORD (demo admin password)',
  );
}
export const HTTP = `http://${BASE}`;
export const WS = `ws://${BASE}/ws`;

/** How long one expectation may take to come true. */
export const WAIT_MS = 10_000;

/** An access token of demo's admin. */
export async function demoToken() {
  const r = await fetch(`${HTTP}/realms/demo/protocol/openid-connect/token`, {
    method: 'POST',
    body: new URLSearchParams({
      grant_type: 'password',
      username: 'admin',
      password: DEMO_PASSWORD,
    }),
  });
  const body = await r.json();
  if (!r.ok || !body.access_token) {
    throw new Error(`token: ${r.status} ${JSON.stringify(body)}`);
  }
  return body.access_token;
}

/** Revokes a token (`POST …/revoke`, form `token=`). */
export async function revoke(token) {
  const r = await fetch(`${HTTP}/realms/demo/protocol/openid-connect/revoke`, {
    method: 'POST',
    body: new URLSearchParams({ token }),
  });
  if (!r.ok) {
    throw new Error(`revoke: ${r.status} ${await r.text()}`);
  }
}

/** `POST path` with a JSON body (or none) behind `token`: the answer's JSON. */
export async function post(token, path, body) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
  }
  const r = await fetch(`${HTTP}${path}`, {
    method: 'POST',
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) {
    throw new Error(`POST ${path}: ${r.status} ${text}`);
  }
  return text ? JSON.parse(text) : null;
}

/** A flight number no other test of this run uses (`XX` + 4 digits). */
let numbers = 0;
export function flightNumber(prefix = 'JS') {
  numbers += 1;
  const n = (Date.now() + numbers * 7919 + process.pid) % 10000;
  return `${prefix}${String(n).padStart(4, '0')}`;
}

/** A new flight's fields, as `POST /api/flights` takes them. */
export function newFlight(number, capacity = 30) {
  return {
    number,
    origin: 'ARN',
    destination: 'LHR',
    departure: '2030-06-01T08:00:00Z',
    arrival: '2030-06-01T10:30:00Z',
    capacity,
  };
}

/**
 * Resolves with `check()`'s first truthy answer, checked now and on each
 * call of the returned `poke`; rejects after `ms` naming `what`.
 */
export function until(what, check, ms = WAIT_MS) {
  let poke;
  const promise = new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`not within ${ms} ms: ${what}`)),
      ms,
    );
    poke = () => {
      let v;
      try {
        v = check();
      } catch (e) {
        clearTimeout(timer);
        reject(e);
        return;
      }
      if (v) {
        clearTimeout(timer);
        resolve(v);
      }
    };
  });
  poke();
  return { promise, poke };
}
