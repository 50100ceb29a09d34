// Cairn's live API (`/ws`, RES v1.2) spoken by Resgate's own JavaScript
// client, `resclient`, unchanged from npm, over `ws`'s WebSocket (Node 20
// has no global one). Configured by CAIRN_BASE (host:port of a running
// `cairn up`) and CAIRN_DEMO_PASSWORD; run with `node --test`, as
// cairn/tests/js_clients.rs does.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import resclient from 'resclient';
import WebSocket from 'ws';

import {
  WS,
  demoToken,
  flightNumber,
  newFlight,
  post,
  revoke,
  until,
} from './helpers.mjs';

// resclient is CommonJS with an ES-module-style default export.
const ResClient = resclient.default;
const { isResError } = resclient;

const TIMEOUT = 30_000;

/**
 * A resclient that authenticates with `token` on each connect, as a browser
 * application would. `frames` gets every frame the server sent, parsed. The
 * outcome of the authentication is kept in `auth` (`{ result }` or
 * `{ error }`): resclient wants onConnect's promise to resolve, so a
 * refusal is caught here rather than left to stall the connection.
 */
function client(t, token) {
  const frames = [];
  const c = new ResClient(() => {
    const ws = new WebSocket(WS);
    ws.on('message', (data) => {
      try {
        frames.push(JSON.parse(String(data)));
      } catch {
        frames.push({ unparsed: String(data) });
      }
    });
    return ws;
  });
  c.frames = frames;
  c.auth = null;
  c.setOnConnect((c) =>
    c.authenticate('identity.session', 'token', { token }).then(
      (result) => {
        c.auth = { result };
      },
      (error) => {
        c.auth = { error };
      },
    ),
  );
  t.after(() => c.disconnect());
  return c;
}

const isAccessDenied = (e) =>
  isResError(e) && e.code === 'system.accessDenied'
    ? true
    : assert.fail(`expected a ResError system.accessDenied, got ${describe(e)}`);

function describe(e) {
  if (isResError(e)) {
    return `ResError ${e.code}: ${e.message} ${JSON.stringify(e.data ?? null)}`;
  }
  return e instanceof Error ? e.stack : JSON.stringify(e);
}

test('flights.flights receives an add for a flight created over HTTP', { timeout: TIMEOUT }, async (t) => {
  const token = await demoToken();
  const c = client(t, token);
  const flights = await c.get('flights.flights');
  assert.deepEqual(c.auth?.error, undefined, 'authenticated');
  assert.equal(c.auth.result?.tenant, 'demo');
  const adds = [];
  let created = null;
  const added = until('the add of the new flight', () =>
    adds.find((a) => a.item?.id !== undefined && a.item.id === created?.id),
  );
  flights.on('add', (e) => {
    adds.push(e);
    added.poke();
  });

  const number = flightNumber('RC');
  created = await post(token, '/api/flights', newFlight(number));
  assert.ok(created?.id, `a flight id in ${JSON.stringify(created)}`);
  added.poke();
  const add = await added.promise;
  assert.equal(add.item.getResourceId(), `flights.flight.${created.id}`);
  assert.equal(add.item.id, created.id);
  assert.equal(add.item.number, number);
  assert.equal(add.item.status, 'scheduled');
  assert.ok(
    flights.toArray().some((f) => f.id === created.id),
    'the collection holds the new flight',
  );
});

test('flights.flight.<id> changes until its counts show the passenger boarded', { timeout: TIMEOUT }, async (t) => {
  const token = await demoToken();
  const created = await post(token, '/api/flights', newFlight(flightNumber('RC')));
  const c = client(t, token);
  const flight = await c.get(`flights.flight.${created.id}`);
  assert.equal(flight.id, created.id);
  assert.deepEqual({ ...flight.passengers }, { total: 0, boarded: 0 });
  const changes = [];
  const boarded = until(
    'flight counts of total 1, boarded 1',
    () => flight.passengers?.total === 1 && flight.passengers?.boarded === 1,
  );
  flight.on('change', (changed) => {
    changes.push({ changed, passengers: { ...flight.passengers } });
    boarded.poke();
  });

  const passenger = await post(token, '/api/passengers', {
    flightId: created.id,
    name: 'Ada Lovelace',
    document: 'P1234567',
  });
  assert.ok(passenger?.id, `a passenger id in ${JSON.stringify(passenger)}`);
  await post(token, `/api/passengers/${passenger.id}/boarding`);
  await boarded.promise.catch((e) => {
    throw new Error(`${e.message}; changes seen: ${JSON.stringify(changes)}`);
  });
  assert.ok(changes.length >= 1, 'the counts came as change events');
  assert.ok(
    changes.every((ch) => 'passengers' in ch.changed),
    `every change was to the counts: ${JSON.stringify(changes)}`,
  );
});

test('a forged token is refused', { timeout: TIMEOUT }, async (t) => {
  const real = await demoToken();
  const [header, payload, signature] = real.split('.');
  assert.ok(signature, 'the token is a JWS');
  // A character in the middle of the signature (the last one may only
  // carry padding bits).
  const i = Math.floor(signature.length / 2);
  const other = signature[i] === 'A' ? 'B' : 'A';
  const resigned = `${header}.${payload}.${signature.slice(0, i)}${other}${signature.slice(i + 1)}`;
  for (const [what, token] of [
    ['its signature changed', resigned],
    ['a garbage string', 'not-a-token-at-all'],
  ]) {
    await t.test(what, async (t) => {
      const c = client(t, token);
      await assert.rejects(c.get('flights.flights'), isAccessDenied);
      assert.ok(c.auth, 'the authentication was answered');
      assert.ok(c.auth.error, `authenticate rejected (got ${JSON.stringify(c.auth.result)})`);
      isAccessDenied(c.auth.error);
      // Nothing of the tenant's was sent.
      assert.ok(
        !c.frames.some((f) => f.result?.collections || f.result?.models || f.event),
        `no resources sent: ${JSON.stringify(c.frames)}`,
      );
    });
  }
});

test('a revoked token loses its subscriptions', { timeout: TIMEOUT }, async (t) => {
  const token = await demoToken();
  const c = client(t, token);
  const flights = await c.get('flights.flights');
  assert.equal(c.auth?.error, undefined, 'authenticated');
  let unsubscribed = 0;
  const gone = until('an unsubscribe of flights.flights', () => unsubscribed > 0, 3_000);
  // Subscribed and listened to before the revocation.
  flights.on('unsubscribe', () => {
    unsubscribed += 1;
    gone.poke();
  });

  await revoke(token);
  await gone.promise.catch((e) => {
    throw new Error(
      `${e.message} after the revocation; frames: ${JSON.stringify(c.frames.slice(-5))}`,
    );
  });
  const frame = c.frames.find((f) => f.event === 'flights.flights.unsubscribe');
  assert.ok(frame, 'the server sent flights.flights.unsubscribe');
  assert.equal(frame.data?.reason?.code, 'system.accessDenied', JSON.stringify(frame));
});
