// browser_pages.test.mjs - the PWA in headless Chromium without a relay (web/ served by a
// tiny static server): stable ids, the wasm core generating in the browser, fragments in
// IndexedDB checked by sha256, the contribute Worker, the service worker (installable,
// offline shell that says it is offline), and screenshots of the three pages at 360x740 and
// 1280x800 into tests/artifacts/ (the dashboard fed a fixed /api/stats so it has figures).
//
// Needs tests/web/node_modules (cd tests/web && npm ci) and /usr/bin/chromium; skips
// with a message otherwise.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { canBrowse, launch, serveWeb, artifacts, models } from './browser_util.mjs';

const skip = canBrowse() ? false : 'playwright-core (tests/web) or /usr/bin/chromium missing';
const modelPath = join(models, 'stories260K.gguf');

// What a relay with three models and a few nodes reports (shape of relay/http.c).
const STATS = {
  relay: 'essaim-relay', uptime_s: 93784, tls: false, replicas_target: 3,
  nodes: { live: 12, known_this_run: 15, known_ever: 41 }, ws_open: 14,
  fragments: { total: 169, lost: 2, under_replicated: 19, replicas_live: 441, bytes_stored: 1.38e9 },
  replica_histogram: [2, 5, 12, 98, 52],
  requests_inflight: 7,
  counters: { requests_completed: 183122, requests_resent: 214, requests_failed: 3 },
  models: [
    { id: 'a'.repeat(64), name: 'TinyLlama-1.1B-Chat Q4_K_M', fragments: 66, bytes: 667e6, fragments_lost: 0, fragments_under_replicated: 4 },
    { id: 'b'.repeat(64), name: 'stories260K', fragments: 3, bytes: 1.2e6, fragments_lost: 0, fragments_under_replicated: 0 },
    { id: 'c'.repeat(64), name: 'Mistral-7B-Instruct v0.3 Q4_0', fragments: 100, bytes: 4.1e9, fragments_lost: 2, fragments_under_replicated: 15 },
  ],
  live_nodes: Array.from({ length: 6 }, (_, i) => ({
    index: i, key: (i * 7919).toString(16).padStart(4, '0') + 'e5a1b2c3d4f5a6b7c8', uptime_s: 3600 * (6 - i) + 120 * i,
    budget: 64 << 20, used: (10 + i) << 20, fragments: 1 + (i % 3), inflight: i % 2, served: 40000 - 5000 * i, timeouts: i === 4 ? 3 : 0 })),
};

let srv, br, tick = 0;
before(async () => {
  if (skip) return;
  mkdirSync(artifacts, { recursive: true });
  srv = await serveWeb({
    '/api/stats': () => { tick++; return { body: JSON.stringify({ ...STATS, counters: { ...STATS.counters, requests_completed: STATS.counters.requests_completed + 37 * tick } }) }; },
    '/test/model.gguf': () => existsSync(modelPath) ? { type: 'application/octet-stream', body: readFileSync(modelPath) } : { status: 404, body: '' },
  });
  br = await launch();
});
after(async () => { await br?.close(); await srv?.close(); });

async function page(path, viewport = { width: 1280, height: 800 }) {
  const p = await br.ctx.newPage();
  await p.setViewportSize(viewport);
  const errors = [];
  p.on('pageerror', e => errors.push(e.message));
  await p.goto(srv.url + path);
  p.errors = errors;
  return p;
}

test('pages carry the stable ids', { skip }, async () => {
  const want = { '/': ['#join', '#leave', '#status', '#fragments'],
                 '/chat.html': ['#prompt', '#send', '#stop', '#temperature', '#max-tokens'],
                 '/dashboard.html': ['#nodes-online', '#coverage'] };
  for (const [path, ids] of Object.entries(want)) {
    const p = await page(path);
    for (const id of ids) assert.equal(await p.locator(id).count(), 1, `${path} ${id}`);
    assert.deepEqual(p.errors, [], `${path}: no script errors`);
    await p.close();
  }
});

test('the wasm core generates in Chromium (SIMD128) what llama.cpp does', { skip: skip || (!existsSync(modelPath) && 'no test models') }, async () => {
  const p = await page('/');
  const out = await p.evaluate(async () => {
    const { NodeCore, DriverCore, fragmentGguf, requestFrame } = await import('/js/core.js');
    const wire = await import('/js/wire.js');
    const gguf = new Uint8Array(await (await fetch('/test/model.gguf')).arrayBuffer());
    const node = await NodeCore.create(), drv = await DriverCore.create();
    const isa = node.X.ess_cpu_isa();
    const { files } = fragmentGguf(node, gguf, 64 << 10);
    const ids = [];
    for (const f of files) {
      const id = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', f)), b => b.toString(16).padStart(2, '0')).join('');
      const info = node.open(id, f);
      ids[info.index] = id;
      if (info.cls === 'header') drv.addHeader(f);
    }
    drv.open(gguf.length, { nCtx: 128 });
    for (const i of drv.neededFrags()) drv.addFrag(files[i]);
    drv.start();
    const exec = async (reqs, deliver) => {
      for (const q of reqs) deliver(q, wire.decodeResult(wire.decodeHeader(node.handle(requestFrame(1, q, wire.unhex(ids[q.frag])))).payload).values);
    };
    const prompt = drv.encode('Once upon a time', true, true);
    drv.sampler({ temp: 0 });
    await drv.eval(prompt, exec);
    const gen = [];
    for (let i = 0; i < 12; i++) { const id = drv.sample(); gen.push(id); await drv.eval([id], exec); }
    return { isa, prompt, gen };
  });
  assert.equal(out.isa, 2, 'SIMD128 kernels');
  assert.deepEqual(out.prompt, [1, 403, 407, 261, 378]);
  assert.deepEqual(out.gen, [432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338]);
  await p.close();
});

test('IndexedDB keeps fragments only under their sha256, across reloads', { skip }, async () => {
  const p = await page('/dashboard.html');
  const r = await p.evaluate(async () => {
    const store = await import('/js/store.js');
    const bytes = new TextEncoder().encode('fragment bytes');
    const id = await store.sha256Hex(bytes);
    let refused = false;
    try { await store.putFragment('0'.repeat(64), bytes, { role: 'test' }); } catch { refused = true; }
    await store.putFragment(id, bytes, { role: 'test' });
    return { id, refused };
  });
  assert.ok(r.refused, 'a fragment whose hash differs from its id is refused');
  await p.reload();
  const back = await p.evaluate(async id => {
    const store = await import('/js/store.js');
    const got = new TextDecoder().decode(await store.getFragment(id));
    const listed = (await store.listFragments()).some(f => f.id === id);
    await store.deleteFragment(id);
    return { got, listed, after: await store.getFragment(id) };
  }, r.id);
  assert.equal(back.got, 'fragment bytes');
  assert.ok(back.listed);
  assert.equal(back.after, undefined);
  await p.close();
});

test('contribute: Join without a relay says so, and the page stays responsive', { skip }, async () => {
  const p = await page('/', { width: 360, height: 740 });
  await p.click('#join');
  await p.waitForFunction(() => ['offline', 'reconnecting'].includes(document.querySelector('#status').dataset.state), null, { timeout: 15000 });
  assert.match(await p.textContent('#status'), /unreachable|Reconnecting/);
  assert.ok(await p.isVisible('#leave'), 'Leave is offered once joined');
  await p.click('input[value=contribute]', { force: true });
  assert.equal(await p.evaluate(() => document.querySelector('input[name=mode]:checked').value), 'contribute');
  p.on('dialog', d => d.accept());
  await p.click('#leave');
  await p.waitForFunction(() => document.querySelector('#status').dataset.state === 'idle', null, { timeout: 10000 });
  assert.ok(await p.isVisible('#join'), 'Join is offered again after leaving');
  await p.click('input[value=both]', { force: true });
  await p.close();
});

test('PWA: manifest with 192 and 512 PNG icons; the shell loads offline and says so', { skip }, async () => {
  const p = await page('/');
  const man = await p.evaluate(async () => (await fetch(document.querySelector('link[rel=manifest]').href)).json());
  for (const size of ['192x192', '512x512']) {
    const icon = man.icons.find(i => i.sizes === size && i.type === 'image/png');
    assert.ok(icon, `icon ${size}`);
    const st = await p.evaluate(async u => (await fetch(u)).status, icon.src);
    assert.equal(st, 200);
  }
  assert.equal(man.display, 'standalone');
  await p.evaluate(async () => { await navigator.serviceWorker.ready; });
  await p.reload();
  await p.waitForFunction(() => !!navigator.serviceWorker.controller, null, { timeout: 10000 });
  await br.ctx.setOffline(true);
  try {
    for (const path of ['/', '/chat.html', '/dashboard.html']) {
      await p.goto(srv.url + path);
      assert.ok(await p.isVisible('.offline'), `${path}: offline banner shown`);
      assert.match(await p.textContent('.offline'), /offline/i);
    }
  } finally {
    await br.ctx.setOffline(false);
  }
  await p.close();
});

test('screenshots of the three pages at 360x740 and 1280x800', { skip }, async () => {
  for (const [w, h] of [[360, 740], [1280, 800]]) {
    // contribute
    let p = await page('/', { width: w, height: h });
    await p.waitForTimeout(300);
    await p.screenshot({ path: join(artifacts, `contribute-${w}x${h}.png`), fullPage: true });
    await p.close();
    // chat, with a conversation from IndexedDB (what a reload shows)
    p = await page('/chat.html', { width: w, height: h });
    // The page first stores a new empty conversation of its own: let it, then replace it.
    for (let i = 0; i < 100 && !await p.evaluate(async () => (await import('/js/store.js')).getSetting('conversation')); i++)
      await p.waitForTimeout(50);
    // The page's own first save can still land after ours: store, reload, and try again
    // (a few times at most) until the stored conversation is what the page shows.
    for (let attempt = 0; ; attempt++) {
      await p.evaluate(async () => {
        const store = await import('/js/store.js');
        await store.putConversation({ id: 'demo', title: 'demo', messages: [
          { role: 'user', content: 'Tell me a short story about a cat.' },
          { role: 'assistant', content: 'Once upon a time, there was a little cat named Tom. Tom liked to sit in the sun by the window. One day, he saw a bird outside and wanted to play with it.' },
          { role: 'user', content: 'What happened next?' }] });
        await store.setSetting('conversation', 'demo');
      });
      await p.reload();
      try {
        await p.waitForSelector('.msg.assistant', { timeout: 5000 });
        break;
      } catch (err) {
        if (attempt >= 3) throw err;
      }
    }
    await p.waitForTimeout(300);
    await p.screenshot({ path: join(artifacts, `chat-${w}x${h}.png`), fullPage: false });
    await p.close();
    // dashboard (two polls so requests/s has a value)
    p = await page('/dashboard.html', { width: w, height: h });
    await p.waitForFunction(() => document.querySelector('#rps').textContent !== '—', null, { timeout: 10000 });
    assert.equal(await p.textContent('#nodes-online'), '12');
    assert.equal(await p.textContent('#coverage'), '98.8%');
    await p.screenshot({ path: join(artifacts, `dashboard-${w}x${h}.png`), fullPage: true });
    await p.close();
  }
});
