// browser_relay.test.mjs - the PWA against a real essaim-relay (build/essaim-relay, or
// ESSAIM_BUILD): (a) a browser node joins, is assigned fragments, downloads them, checks
// them and answers the relay's possession checks; the dashboard shows it; a reload rejoins
// without downloading again; Leave deletes everything. (b) the chat page answers through
// the relay with the browser node computing, streaming text into #answer. (c) with native
// nodes too (build/essaim node), one of them killed mid-answer: the answer completes and
// the dashboard counts the failover.
// Skips with a message when essaim-relay, playwright-core or chromium is missing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, cpSync, copyFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { canBrowse, launch, relayBin, essaimBin, webDir, wasmPath, models } from './browser_util.mjs';

const modelPath = join(models, 'stories260K.gguf');
const skip = !canBrowse() ? 'playwright-core (tests/web) or /usr/bin/chromium missing'
  : !relayBin ? 'essaim-relay not built (build/essaim-relay)'
  : !essaimBin ? 'essaim not built (needed to fragment the model)'
  : !existsSync(modelPath) ? 'no test models' : false;

const tmp = mkdtempSync(join(tmpdir(), 'essaim-brelay-'));
const PORT = 18500 + (process.pid % 400);
const base = `http://127.0.0.1:${PORT}`;
let relay, br;
const procs = [];

const stats = async () => (await fetch(`${base}/api/stats`)).json();
async function until(fn, what, ms = 30000) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise(r => setTimeout(r, 250));
  }
}

before(async () => {
  if (skip) return;
  const frags = join(tmp, 'frags'), store = join(tmp, 'store'), web = join(tmp, 'web');
  execFileSync(essaimBin, ['fragment', modelPath, '-o', frags, '--max-size', '64K'], { stdio: 'ignore' });
  execFileSync(relayBin, ['--store', store, '--add-model', frags], { stdio: 'ignore' });
  cpSync(webDir, web, { recursive: true });
  copyFileSync(wasmPath, join(web, 'essaim.wasm'));
  relay = spawn(relayBin, ['--listen', `127.0.0.1:${PORT}`, '--store', store, '--web', web, '--replicas', '1', '--heartbeat', '5'],
                { stdio: ['ignore', 'ignore', 'inherit'] });
  procs.push(relay);
  await until(() => stats(), 'the relay');
  br = await launch();
});
after(async () => {
  await br?.close();
  for (const p of procs) p.kill('SIGTERM');
  rmSync(tmp, { recursive: true, force: true });
});

async function contribute() {
  const p = await br.ctx.newPage();
  p.on('dialog', d => d.accept());
  await p.goto(`${base}/`);
  return p;
}

test('(a) a browser node joins, holds verified fragments, rejoins after a reload without downloading, leaves', { skip }, async () => {
  const p = await contribute();
  await p.click('#join');
  await p.waitForFunction(() => document.querySelector('#status').dataset.state === 'online', null, { timeout: 20000 });
  const s = await until(async () => { const s = await stats(); return s.fragments.lost === 0 && s; }, 'every fragment live on the browser node', 60000);
  assert.equal(s.nodes.live, 1);
  assert.ok(s.counters.proofs_ok >= 1, 'possession checks passed');
  const n = await p.locator('#fragments li').count();
  assert.equal(n, s.fragments.total, 'the page lists every fragment it holds');
  assert.match(await p.textContent('#fragments'), /layer \d/);
  const fetched = [];
  const watch = rq => { if (rq.url().includes('/fragments/')) fetched.push(rq.url()); };
  br.ctx.on('request', watch);
  await p.reload();
  await p.waitForFunction(() => document.querySelector('#status').dataset.state === 'online', null, { timeout: 20000 });
  await until(async () => (await stats()).fragments.lost === 0, 'fragments live again after the reload');
  br.ctx.off('request', watch);
  assert.deepEqual(fetched, [], 'nothing downloaded again (fragments came from IndexedDB)');
  const dash = await br.ctx.newPage();
  await dash.goto(`${base}/dashboard.html`);
  await dash.waitForFunction(() => document.querySelector('#coverage').textContent === '100%', null, { timeout: 10000 });
  assert.equal(await dash.textContent('#nodes-online'), '1');
  await dash.close();
  await p.click('#leave');
  await p.waitForFunction(() => document.querySelector('#status').dataset.state === 'idle', null, { timeout: 10000 });
  assert.equal(await p.evaluate(async () => (await (await import('/js/store.js')).listFragments()).length), 0, 'Leave deleted the fragments');
  await p.close();
});

test('(b) the chat page answers through the relay, streaming into #answer', { skip }, async t => {
  const id = (await stats()).models[0].id;
  if ((await fetch(`${base}/api/models/${id}/manifest.json`)).status !== 200)
    return t.skip('the relay does not serve /api/models/<id>/manifest.json yet');
  const node = await contribute();   // keeps the browser node online in another tab
  await node.waitForFunction(() => document.querySelector('#status').dataset.state === 'online', null, { timeout: 20000 });
  const p = await br.ctx.newPage();
  await p.goto(`${base}/chat.html`);
  await p.waitForFunction(() => document.querySelector('#status').dataset.state === 'ready', null, { timeout: 30000 });
  await p.fill('#temperature', '0');
  await p.fill('#max-tokens', '24');
  await p.fill('#prompt', 'Once upon a time');
  await p.click('#send');
  await p.waitForFunction(() => document.querySelector('#answer')?.textContent.length > 0, null, { timeout: 30000 });
  await p.waitForFunction(() => !document.querySelector('#send').hidden, null, { timeout: 60000 });
  const answer = await p.textContent('#answer');
  assert.ok(answer.trim().length > 10, `an answer: ${answer}`);
  assert.ok((await stats()).counters.requests_completed > 0);
  await p.reload();   // the conversation survives
  await p.waitForSelector('.msg.assistant');
  assert.equal((await p.textContent('.msg.assistant .text')).trim(), answer.trim());
  await p.close();
  await node.close();
});

test('(c) native nodes too; one killed mid-answer: the answer completes and a failover is counted', { skip }, async t => {
  const id = (await stats()).models[0].id;
  if ((await fetch(`${base}/api/models/${id}/manifest.json`)).status !== 200)
    return t.skip('the relay does not serve /api/models/<id>/manifest.json yet');
  const nat = [];
  for (let i = 0; i < 2; i++) {
    const p = spawn(essaimBin, ['node', '--relay', `ws://127.0.0.1:${PORT}/ws`, '--store', join(tmp, `node${i}`), '--budget', '64M'], { stdio: 'ignore' });
    procs.push(p);
    nat.push(p);
  }
  await until(async () => (await stats()).nodes.live >= 2, 'native nodes online');
  const p = await br.ctx.newPage();
  await p.goto(`${base}/chat.html`);
  await p.waitForFunction(() => document.querySelector('#status').dataset.state === 'ready', null, { timeout: 30000 });
  await p.fill('#max-tokens', '64');
  await p.fill('#prompt', 'Tell me a story');
  await p.click('#send');
  await p.waitForFunction(() => document.querySelector('#answer')?.textContent.length > 0, null, { timeout: 30000 });
  nat[0].kill('SIGKILL');
  await p.waitForFunction(() => !document.querySelector('#send').hidden, null, { timeout: 120000 });
  assert.equal(await p.textContent('#error'), '', 'no error shown');
  assert.ok((await p.textContent('#answer')).trim().length > 0);
  await p.close();
});
