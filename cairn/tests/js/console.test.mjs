// Cairn's web console (served at `/`) driven in Debian's Chromium through
// playwright-core, as two people would: A signs in and runs a flight from
// scheduling to departure; B, another session, watches the audit log fill
// in live. Every page is photographed, at desktop size and 375 px wide,
// into CAIRN_ARTIFACTS. Configured by CAIRN_BASE (host:port of a running
// `cairn up`), CAIRN_DEMO_PASSWORD and CAIRN_ARTIFACTS; run with
// `node --test`, as cairn/tests/js_clients.rs does.
//
// What the console is expected to offer (accessible names) is its
// contract: the sign-in page's "Tenant", "Username", "Password" and
// "Sign in"; the header's links "Flights", "Audit log", "Operations" and
// button "Sign out"; the pages' headings, forms, buttons and ids used
// below.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { DEMO_PASSWORD, HTTP, WAIT_MS, demoToken, flightNumber, post } from './helpers.mjs';

const CHROMIUM = process.env.CAIRN_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = process.env.CAIRN_ARTIFACTS ?? join(tmpdir(), 'cairn-console-artifacts');
const DESKTOP = { width: 1280, height: 800 };
const NARROW = { width: 375, height: 812 };

let browser;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
});

/** A page in a context of its own (its own cookies: its own session). */
async function session(t, name) {
  const context = await browser.newContext({ viewport: DESKTOP });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  page.problems = [];
  page.log = [];
  page.on('pageerror', (e) => page.problems.push(`${name}: uncaught: ${e.stack ?? e}`));
  page.on('console', (m) => {
    if (m.type() === 'error') {
      page.log.push(`${name}: console error: ${m.text()}`);
    }
  });
  t.after(() => context.close());
  return page;
}

/** A full-page screenshot of `page` at desktop size and 375 px wide. */
async function photograph(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize(NARROW);
  await page.screenshot({ path: join(ARTIFACTS, `${name}-375.png`), fullPage: true });
  await page.setViewportSize(DESKTOP);
}

/** Waits until `locator`'s text satisfies `ok`, at most WAIT_MS. */
async function textUntil(locator, ok, what) {
  const deadline = Date.now() + WAIT_MS;
  let text;
  for (;;) {
    text = (await locator.textContent({ timeout: WAIT_MS }).catch(() => null))?.trim();
    if (text != null && ok(text)) {
      return text;
    }
    if (Date.now() > deadline) {
      assert.fail(`${what}: not within ${WAIT_MS} ms (last text: ${JSON.stringify(text)})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

const is = (want) => (text) => text === String(want);
const says = (re) => (text) => re.test(text);

async function signIn(page) {
  await page.getByLabel('Tenant').fill('demo');
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill(DEMO_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
}

/** Marks the document: a reload (a new document) loses the mark. */
const mark = (page) => page.evaluate(() => (window.__cairnTestMark = true));
const stillMarked = (page) => page.evaluate(() => window.__cairnTestMark === true);

test('a flight run in the console, watched live in the audit log of another session', { timeout: 180_000 }, async (t) => {
  const a = await session(t, 'A');
  const b = await session(t, 'B');
  t.after(() => {
    const notes = [...a.log, ...b.log];
    if (notes.length) {
      console.log(notes.join('\n'));
    }
  });

  // Sign-in page, then both sessions in.
  await a.goto(`${HTTP}/#/signin`);
  await a.getByLabel('Tenant').waitFor();
  await photograph(a, 'signin');
  await signIn(a);
  await b.goto(`${HTTP}/#/signin`);
  await signIn(b);

  // B opens the audit log and keeps it open.
  await b.getByRole('link', { name: 'Audit log' }).click();
  await b.getByRole('heading', { name: 'Audit log' }).waitFor();
  const log = b.getByRole('log');
  await log.waitFor();
  await mark(b);

  // A schedules a flight.
  await a.getByRole('link', { name: 'Flights' }).click();
  await a.getByRole('heading', { name: 'Flights', exact: true }).waitFor();
  const number = flightNumber('CN');
  const form = a.getByRole('form', { name: 'New flight' });
  await form.getByLabel('Number').fill(number);
  await form.getByLabel('Origin').fill('ARN');
  await form.getByLabel('Destination').fill('LHR');
  await form.getByLabel('Departure').fill('2030-06-01T08:00');
  await form.getByLabel('Arrival').fill('2030-06-01T10:30');
  await form.getByLabel('Capacity').fill('30');
  await form.getByRole('button', { name: 'Create flight' }).click();
  const link = a.getByRole('link', { name: number, exact: true });
  await link.waitFor();
  await a.getByRole('button', { name: `Depart ${number}` }).waitFor();
  await a.getByRole('button', { name: `Land ${number}` }).waitFor();
  await a.getByRole('button', { name: `Delete ${number}` }).waitFor();
  await photograph(a, 'flights');

  // A opens it.
  await link.click();
  await a.waitForURL(/#\/flights\/[^/]+$/, { timeout: WAIT_MS });
  const id = decodeURIComponent(new URL(a.url()).hash.replace(/^#\/flights\//, ''));
  assert.ok(id, `a flight id in ${a.url()}`);
  await a.getByRole('heading', { name: number }).waitFor();
  const status = a.locator('#flight-status');
  const total = a.locator('#flight-total');
  const boarded = a.locator('#flight-boarded');
  await textUntil(status, says(/scheduled/i), '#flight-status scheduled');
  await textUntil(total, is(0), '#flight-total 0');
  await textUntil(boarded, is(0), '#flight-boarded 0');
  await mark(a);

  // A passenger added: the total moves.
  const name = 'Ada Lovelace';
  await a.getByLabel('Name').fill(name);
  await a.getByLabel('Document').fill('P1234567');
  await a.getByRole('button', { name: 'Add passenger' }).click();
  await textUntil(total, is(1), '#flight-total 1 after the passenger was added');
  await textUntil(boarded, is(0), '#flight-boarded 0 before boarding');
  await a.getByRole('button', { name: `Board ${name}` }).waitFor();
  await a.getByRole('button', { name: `Remove ${name}` }).waitFor();

  // Departing before boarding is refused, and says so.
  const alerts = a.locator('[role=alert]:visible');
  assert.deepEqual(await alerts.allTextContents(), [], 'no alert before departing');
  await a.getByRole('button', { name: 'Depart', exact: true }).click();
  await alerts.filter({ hasText: /\S/ }).first().waitFor();
  await textUntil(status, says(/scheduled/i), '#flight-status still scheduled after the refusal');

  // Boarded: the count moves; then it departs.
  await a.getByRole('button', { name: `Board ${name}` }).click();
  await textUntil(boarded, is(1), '#flight-boarded 1 after boarding');
  await a.getByRole('button', { name: 'Depart', exact: true }).click();
  await textUntil(status, says(/departed/i), '#flight-status departed');
  await a.getByRole('button', { name: 'Land', exact: true }).waitFor();
  await a.getByRole('button', { name: 'Delete flight' }).waitFor();
  await photograph(a, 'flight');

  // A change from elsewhere (over HTTP) shows too.
  await post(await demoToken(), `/api/flights/${encodeURIComponent(id)}/landing`);
  await textUntil(status, says(/landed/i), '#flight-status landed after a landing over HTTP');
  assert.ok(await stillMarked(a), 'the flight page moved without a reload');

  // B saw every step, newest first, without a reload.
  for (const [type, stream] of [
    ['FlightScheduled', `flight-${id}`],
    ['PassengerAdded', `manifest-${id}`],
    ['PassengerBoarded', `manifest-${id}`],
    ['FlightDeparted', `flight-${id}`],
    ['FlightLanded', `flight-${id}`],
  ]) {
    await log
      .getByRole('listitem')
      .filter({ hasText: type })
      .filter({ hasText: stream })
      .first()
      .waitFor({ timeout: WAIT_MS })
      .catch(async (e) => {
        const items = await log.getByRole('listitem').allTextContents();
        assert.fail(`audit log of B: no ${type} of ${stream} (${e.message}); items: ${JSON.stringify(items.slice(0, 10))}`);
      });
  }
  assert.ok(await stillMarked(b), 'the audit log moved without a reload');

  // Pause and resume; a filter by event type.
  await b.getByRole('button', { name: 'Pause' }).click();
  await b.getByRole('button', { name: 'Resume' }).click();
  await b.getByRole('button', { name: 'Pause' }).waitFor();
  await b.getByLabel('Stream').waitFor();
  await b.getByLabel('Event type').fill('PassengerBoarded');
  await b.getByLabel('Event type').press('Enter');
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const items = await log.getByRole('listitem').allTextContents();
    if (items.length > 0 && items.every((i) => i.includes('PassengerBoarded'))) {
      break;
    }
    if (Date.now() > deadline) {
      assert.fail(`filtered audit log still shows ${JSON.stringify(items.slice(0, 10))}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await b.getByLabel('Event type').fill('');
  await b.getByLabel('Event type').press('Enter');
  await photograph(b, 'audit');

  // Deleting asks first: dismissed, the flight stays; accepted, it goes.
  const flightStatus = async () =>
    (await fetch(`${HTTP}/api/flights/${encodeURIComponent(id)}`, {
      headers: { authorization: `Bearer ${await demoToken()}` },
    })).status;
  let asked = '';
  a.once('dialog', (d) => { asked = d.message(); return d.dismiss(); });
  await a.getByRole('button', { name: 'Delete flight' }).click();
  await a.getByRole('button', { name: 'Delete flight' }).waitFor();
  assert.match(asked, new RegExp(`Delete flight ${number}\\?`), 'the delete asked first');
  assert.equal(await flightStatus(), 200, 'a dismissed delete leaves the flight');
  a.once('dialog', (d) => d.accept());
  await a.getByRole('button', { name: 'Delete flight' }).click();
  await a.waitForURL(/#\/flights$/, { timeout: WAIT_MS });
  await a.getByRole('link', { name: number, exact: true }).waitFor({ state: 'detached', timeout: WAIT_MS });
  assert.equal(await flightStatus(), 404, 'an accepted delete removes the flight');

  // Operations.
  await a.getByRole('link', { name: 'Operations' }).click();
  await a.getByRole('heading', { name: 'Operations' }).waitFor();
  await textUntil(a.locator('#store-head'), says(/\d/), '#store-head shows a position');
  // Projections and consumers listed (through a gateway, every
  // service's), each with its state.
  await a.getByRole('table', { name: 'Projections' }).getByRole('row').filter({ hasText: 'flights.flights' })
    .filter({ hasText: 'running' }).first().waitFor();
  await a.getByRole('table', { name: 'Consumers' }).getByRole('row').nth(1).waitFor();
  await photograph(a, 'operations');

  // Signed out: back to the sign-in page.
  await a.getByRole('button', { name: 'Sign out' }).click();
  await a.getByLabel('Password').waitFor();

  assert.deepEqual([...a.problems, ...b.problems], [], 'no uncaught errors in the pages');
});
