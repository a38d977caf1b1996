// browser_relay.test.mjs - the PWA in headless Chromium against a real swarm: essaim-relay
// (replicas 2), four contributor pages (each its own browser context, so its own IndexedDB,
// identity and fragments) and, when `essaim node` exists, two native nodes, all covering
// stories260K-pad256-Q4_K_M cut into 64 KB fragments (Q4_K and Q6_K rows computed in wasm).
//   (a) the chat page's greedy answer equals the local engine's token for token
//       (`essaim run MODEL --tokens <the page's prompt ids> -n N --temp 0 --ids -t 1`);
//   (c) a reloaded contributor reopens its fragments from IndexedDB and downloads nothing;
//   (b) closing the busiest contributor tab mid-answer leaves the answer unchanged;
//   (d) screenshots of the three pages on the live swarm, phone (360x740) and desktop
//       (1280x800), into tests/artifacts/*-live-*.png;
//   then the dashboard shows the swarm, and Leave deletes a contributor's fragments.
// (c) runs before (b): after a tab closes the relay re-replicates, and a fresh assignment
// would be a legitimate download. Binaries come from build/ (ESSAIM_BUILD overrides).
// Every process it starts (relay, native nodes, chromium) is stopped in after() and on exit.
// Skips with a message when essaim-relay, essaim, playwright-core, chromium or the model
// is missing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, cpSync, copyFileSync, existsSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { canBrowse, launchBrowser, relayBin, essaimBin, webDir, wasmPath, models, artifacts } from './browser_util.mjs';

// A trained model from ../shared/models, else a random-weight one of the same size that the
// project synthesizes (the chat page's wasm driver gives the native engine's bits on both).
const sharedModel = join(models, 'stories260K-pad256-Q4_K_M.gguf');
const SYNTH = ['synth', '--preset', 'tinyllama-1.1b', '--type', 'Q4_K_M', '--layers', '3', '--embd', '256', '--heads', '8',
               '--kv-heads', '4', '--ff', '512', '--vocab-size', '768', '--seed', '5'];
const N = 24;                         // tokens to generate
const PROMPT = 'Once upon a time';
const PAGES = 4;
const skip = !canBrowse() ? 'playwright-core (tests/web: npm ci) or /usr/bin/chromium missing'
  : !relayBin ? 'essaim-relay not built (build/essaim-relay)'
  : !essaimBin ? 'essaim not built (build/essaim)'
  : !existsSync(wasmPath) ? `no wasm core at ${wasmPath} (make -f Makefile.emscripten-free)` : false;
// Native nodes join when this build has them.
const natives = !skip && /^\s+node\s/m.test(spawnSync(essaimBin, ['--help'], { encoding: 'utf8' }).stdout ?? '') ? 2 : 0;

const BUDGET = natives ? 512 << 10 : 800 << 10;   // bytes each node lends
const tmp = mkdtempSync(join(tmpdir(), 'essaim-brelay-'));
const modelPath = existsSync(sharedModel) ? sharedModel : join(tmp, 'synth-Q4_K_M.gguf');
let base, br;
const procs = [];
const contributors = [];              // {ctx, page}

function stopAll() {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
}
process.on('exit', stopAll);          // even when the runner gives up on a hung test

const freePort = () => new Promise((resolve, reject) => {
  const s = createServer();
  s.on('error', reject);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});
const stats = async () => (await fetch(`${base}/api/stats`)).json();
async function until(fn, what, ms = 30000) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise(r => setTimeout(r, 200));
  }
}
const online = page => page.waitForFunction(() => document.querySelector('#status').dataset.state === 'online', null, { timeout: 20000 });

async function contributor() {
  const ctx = await br.browser.newContext();
  const fetched = [];   // fragment downloads, the node Worker's included
  ctx.on('request', rq => { if (rq.url().includes('/fragments/')) fetched.push(rq.url()); });
  const page = await ctx.newPage();
  page.on('dialog', d => d.accept());
  await page.goto(`${base}/`);
  // A budget below the model's size (about 1.3 MB, twice over with R = 2), so that the
  // nodes share the model instead of the first two holding all of it.
  await page.evaluate(b => { const s = document.querySelector('#budget'); s.add(new Option(`${b >> 10} KB`, b)); s.value = b; }, BUDGET);
  await page.click('#join');
  const c = { ctx, page, fetched };
  contributors.push(c);
  return c;
}

before(async () => {
  if (skip) return;
  const frags = join(tmp, 'frags'), store = join(tmp, 'store'), web = join(tmp, 'web');
  if (modelPath !== sharedModel) execFileSync(essaimBin, [...SYNTH, '-o', modelPath], { stdio: 'ignore' });
  execFileSync(essaimBin, ['fragment', modelPath, '-o', frags, '--max-size', '64K'], { stdio: 'ignore' });
  execFileSync(relayBin, ['--store', store, '--add-model', frags], { stdio: 'ignore' });
  cpSync(webDir, web, { recursive: true });
  copyFileSync(wasmPath, join(web, 'essaim.wasm'));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  procs.push(spawn(relayBin, ['--listen', `127.0.0.1:${port}`, '--store', store, '--web', web, '--replicas', '2', '--heartbeat', '5'],
                   { stdio: ['ignore', 'ignore', 'ignore'] }));
  await until(() => stats(), 'the relay', 10000);
  for (let i = 0; i < natives; i++)
    procs.push(spawn(essaimBin, ['node', '--relay', `ws://127.0.0.1:${port}/ws`, '--store', join(tmp, `node${i}`), '--budget', String(BUDGET)],
                     { stdio: 'ignore' }));
  br = await launchBrowser();
  for (let i = 0; i < PAGES; i++) await contributor();
  for (const c of contributors) await online(c.page);
  await until(async () => { const s = await stats(); return s.nodes.live >= PAGES + natives && s.fragments.under_replicated === 0; },
              'every fragment on 2 live nodes', 60000);
});

after(async () => {
  await br?.close();
  for (const p of procs) if (p.exitCode === null) p.kill('SIGTERM');
  await new Promise(r => setTimeout(r, 300));
  stopAll();
  rmSync(tmp, { recursive: true, force: true });
});

let chat, want;   // the chat page and the tokens (a) got

// Asks PROMPT greedily on a fresh conversation; onFirstText runs once the answer streams.
async function ask(onFirstText) {
  await chat.click('#new-chat');
  await chat.evaluate(() => { const t = document.querySelector('#temperature'); t.value = '0'; t.dispatchEvent(new Event('input')); });
  await chat.fill('#max-tokens', String(N));
  await chat.fill('#prompt', PROMPT);
  await chat.click('#send');
  await chat.waitForFunction(() => document.querySelector('#answer')?.textContent.length > 0, null, { timeout: 30000 });
  if (onFirstText) await onFirstText();
  await chat.waitForFunction(() => document.querySelector('#answer')?.dataset.tokens !== undefined || document.querySelector('#error').textContent,
                             null, { timeout: 60000 });
  assert.equal(await chat.textContent('#error'), '', 'no error shown');
  return chat.evaluate(() => { const d = document.querySelector('#answer').dataset; return { tokens: d.tokens, prompt: d.prompt, reason: d.reason, text: document.querySelector('#answer').textContent }; });
}

test(`(a) ${PAGES} contributor pages${natives ? ` and ${natives} native nodes` : ''} serve the chat page's greedy answer, equal to the local engine token for token`, { skip }, async t => {
  const s0 = await stats();
  t.diagnostic(`fragments held per node: ${s0.live_nodes.map(n => n.fragments).join(' ')}`);
  assert.ok(s0.live_nodes.every(n => n.fragments > 0), 'every node holds part of the model');
  const ctx = await br.browser.newContext();
  chat = await ctx.newPage();
  await chat.goto(`${base}/chat.html`);
  await chat.waitForFunction(() => document.querySelector('#status').dataset.state === 'ready', null, { timeout: 30000 });
  const r0 = (await stats()).counters.requests_completed;
  const got = await ask();
  const ids = got.tokens.split(',').map(Number);
  assert.ok(ids.length === N || got.reason === 'end', `${ids.length} tokens, reason ${got.reason}`);
  const local = execFileSync(essaimBin, ['run', modelPath, '--tokens', got.prompt, '-n', String(N), '--temp', '0', '--ids', '-t', '1'],
                             { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split(/\s+/).map(Number);
  assert.deepEqual(ids, local.slice(0, ids.length), 'the same tokens as essaim run --temp 0');
  assert.ok(got.text.trim().length > 10, `an answer: ${got.text}`);
  const s = await stats();
  assert.ok(s.counters.requests_completed - r0 >= ids.length, 'every token went through the swarm');
  t.diagnostic(`requests served per node: ${s.live_nodes.map(n => n.served).join(' ')}`);
  const served = await Promise.all(contributors.map(c => c.page.textContent('#served').then(t => +t.replace(/\D/g, ''))));
  assert.ok(served.some(n => n > 0), `the browser nodes served requests (${served})`);
  want = got.tokens;
});

test('(d) screenshots of the three pages on the live swarm', { skip }, async () => {
  mkdirSync(artifacts, { recursive: true });
  const ctx = await br.browser.newContext();
  const dash = await ctx.newPage();
  await dash.goto(`${base}/dashboard.html`);
  const shots = [['contribute', contributors[1].page], ['chat', chat], ['dashboard', dash]];
  for (const [w, h] of [[360, 740], [1280, 800]]) {
    for (const [name, page] of shots) {
      await page.setViewportSize({ width: w, height: h });
      if (name === 'dashboard') await page.waitForFunction(() => document.querySelector('#rps').textContent !== '—', null, { timeout: 10000 });
      await page.waitForTimeout(200);
      await page.screenshot({ path: join(artifacts, `${name}-live-${w}x${h}.png`), fullPage: name !== 'chat' });
    }
  }
  await ctx.close();
});

test('(c) a reloaded contributor reopens its fragments from IndexedDB and downloads nothing', { skip }, async () => {
  const { page, fetched } = contributors[0];
  const before = (await page.evaluate(async () => (await (await import('/js/store.js')).listFragments()).map(f => f.id))).sort();
  assert.ok(before.length > 0, 'it holds fragments');
  assert.ok(fetched.length >= before.length, `the watch saw its first downloads (${fetched.length})`);
  const n0 = fetched.length;
  await page.reload();
  await online(page);   // fragments are reopened before connecting
  assert.equal(+await page.textContent('#nfrags'), before.length, 'every stored fragment reopened');
  await until(async () => (await stats()).fragments.under_replicated === 0, 'every fragment replicated again', 20000);
  assert.deepEqual(fetched.slice(n0), [], 'nothing downloaded again');
  assert.deepEqual(await page.evaluate(async () => (await (await import('/js/store.js')).listFragments()).map(f => f.id).sort()), before);
});

test('(b) closing the busiest contributor tab mid-answer leaves the answer unchanged', { skip }, async t => {
  assert.ok(want, '(a) gave the answer to compare with');
  const s0 = await stats();
  let closed = -1, midway = false;
  const got = await ask(async () => {
    const served = await Promise.all(contributors.map(c => c.page.textContent('#served').then(x => +x.replace(/\D/g, ''))));
    closed = served.indexOf(Math.max(...served));
    await contributors[closed].page.close();
    midway = await chat.evaluate(() => document.querySelector('#answer').dataset.tokens === undefined);
  });
  assert.ok(closed >= 0);
  assert.ok(midway, 'the tab closed before the answer was complete');
  assert.equal(got.tokens, want, 'the same tokens as with every tab open');
  const s = await stats();
  assert.equal(s.nodes.live, s0.nodes.live - 1, 'the relay saw the tab go');
  t.diagnostic(`requests resent by the relay: ${s.counters.requests_resent - s0.counters.requests_resent}`);
  await contributors[closed].ctx.close();
  contributors.splice(closed, 1);
});

test('the dashboard shows the swarm; Leave deletes a contributor\'s fragments', { skip }, async () => {
  const ctx = await br.browser.newContext();
  const dash = await ctx.newPage();
  await dash.goto(`${base}/dashboard.html`);
  await dash.waitForFunction(() => document.querySelector('#coverage').textContent === '100%', null, { timeout: 10000 });
  assert.equal(+await dash.textContent('#nodes-online'), (await stats()).nodes.live);
  await ctx.close();
  const { page } = contributors[contributors.length - 1];
  await page.click('#leave');
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'idle', null, { timeout: 10000 });
  assert.equal(await page.evaluate(async () => (await (await import('/js/store.js')).listFragments()).length), 0, 'Leave deleted the fragments');
});
