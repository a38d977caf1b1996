// driver-worker.js - the chat page's Worker: the asker. The wasm driver (wasm/abi_driver.c)
// tokenizes, runs the model as rounds of COMPUTE/ROWS frames sent through the relay,
// samples and detokenizes; the page only shows text. The relay sees numbers, never text.
//
// Page -> worker: {cmd:'init', model?}  {cmd:'ask', messages, temperature, maxTokens}
//                 {cmd:'stop'}
// Worker -> page: {type:'state', state, detail}  {type:'ready', model}
//                 {type:'progress', token, layer, nLayer}  {type:'text', text}
//                 {type:'done', reason, tokens, seconds, rounds, ids, prompt}  {type:'error', message}
//                 (ids: the generated token ids, prompt: the prompt's, so that a test can
//                 replay them through the local engine)
//
// The model's header fragments and the small-tensor ("needed") fragments are downloaded
// once and kept in IndexedDB (role 'asker'); the big weights stay on the nodes.

import { DriverCore, requestFrame } from './core.js';
import * as wire from './wire.js';
import * as store from './store.js';
import { connect, relayUrl } from './relay.js';

let drv = null, conn = null, model = null, fragIds = null, stops = [];
let evaluated = [];           // tokens in the KV cache, to reuse a conversation's prefix
let stopFlag = false, busy = false;
let nextId = 1;
const pending = new Map();    // wire id -> {q, done, fail, tries}
const DEADLINE_MS = 20000, TRIES = 3;

const say = m => self.postMessage(m);
const state = (s, detail = '') => say({ type: 'state', state: s, detail });

async function getJson(urls) {
  for (const u of urls) {
    try { const r = await fetch(u); if (r.ok) return await r.json(); } catch { /* next */ }
  }
  return null;
}

// A fragment file from IndexedDB, or downloaded, checked and stored.
async function fragment(id) {
  const have = await store.getFragment(id);
  if (have) return new Uint8Array(have);
  const r = await fetch(`/fragments/${id}`);
  if (!r.ok) throw new Error(`fragment ${id.slice(0, 12)}: HTTP ${r.status}`);
  const bytes = new Uint8Array(await r.arrayBuffer());
  await store.putFragment(id, bytes, { role: 'asker', modelId: model.id });
  return bytes;
}

async function init(want) {
  state('loading', 'looking for models');
  const stats = await getJson(['/api/stats']);
  if (!stats) throw new Error('the relay is not reachable');
  const list = stats.models ?? [];
  if (!list.length) throw new Error('the relay serves no model yet');
  model = list.find(m => m.id === want) ?? list[0];
  const man = await getJson([`/api/models/${model.id}/manifest.json`, `/models/${model.id}/manifest.json`]);
  if (!man) throw new Error(`no manifest for model ${model.name ?? model.id}`);
  fragIds = [];
  for (const f of man.fragments) fragIds[f.index] = f.id;

  state('loading', 'starting the engine');
  drv = await DriverCore.create();
  const headers = man.fragments.filter(f => f.class === 'header');
  for (const [i, f] of headers.entries()) {
    state('loading', `model header ${i + 1}/${headers.length}`);
    drv.addHeader(await fragment(f.id));
  }
  const info = drv.open(man.source.size);
  const need = drv.neededFrags();
  for (const [i, idx] of need.entries()) {
    state('loading', `small tensors ${i + 1}/${need.length}`);
    drv.addFrag(await fragment(fragIds[idx]));
  }
  drv.start();
  stops = drv.stopStrings();

  state('connecting', 'relay');
  conn = await connect(relayUrl(), { roles: ['asker'], onFrame, onClose: r => { conn = null; state('offline', r); failAll(new Error(`relay: ${r}`)); } });
  say({ type: 'ready', model: { ...info, name: model.name ?? man.source.name, id: model.id } });
  state('ready');
}

function send(p) {
  if (!conn) { p.fail(new Error('not connected to the relay')); return; }
  const id = nextId++;
  pending.set(id, p);
  conn.send(requestFrame(id, p.q, wire.unhex(fragIds[p.q.frag]), DEADLINE_MS));
}

function failAll(e) { for (const p of pending.values()) p.fail(e); pending.clear(); }

function onFrame(h) {
  const p = pending.get(h.id);
  if (!p) return;                    // late, duplicate, or a stopped round
  pending.delete(h.id);
  if (h.type === wire.T.RESULT) {
    const r = wire.decodeResult(h.payload);
    if (r.nTok !== p.q.nTok || r.nCols !== p.q.outCols) return retry(p, `result ${r.nTok}x${r.nCols}, wanted ${p.q.nTok}x${p.q.outCols}`);
    p.done(r.values);
  } else if (h.type === wire.T.ERROR) {
    const e = wire.decodeError(h.payload);
    retry(p, `${e.name}: ${e.text}`);
  }
}

function retry(p, why) {
  if (++p.tries >= TRIES) p.fail(new Error(`a request failed ${TRIES} times (${why})`));
  else send(p);
}

// One round over the relay: every request at once, then wait for all.
function exec(reqs, deliver) {
  return new Promise((resolve, reject) => {
    let left = reqs.length, failed = false;
    for (const q of reqs)
      send({ q, tries: 0,
             done: v => { if (failed) return; deliver(q, v); if (--left === 0) resolve(); },
             fail: e => { if (!failed) { failed = true; reject(e); } } });
  });
}

// The part of text safe to show: up to a stop string, minus a tail that may begin one.
function visible(text) {
  for (const s of stops) { const i = text.indexOf(s); if (i >= 0) return { shown: text.slice(0, i), stopped: true }; }
  let keep = text.length;
  for (const s of stops)
    for (let k = Math.min(s.length - 1, text.length); k > 0; k--)
      if (text.endsWith(s.slice(0, k))) { keep = Math.min(keep, text.length - k); break; }
  return { shown: text.slice(0, keep), stopped: false };
}

async function ask({ messages, temperature = 0.8, maxTokens = 256 }) {
  busy = true;
  stopFlag = false;
  const t0 = performance.now(), r0 = drv.rounds();
  let reason = 'length', n = 0, prompt = [];
  const ids = [];
  try {
    prompt = drv.encode(drv.chat(messages, true), true, true);
    const info = drv.info;
    if (prompt.length + 1 >= info.nCtx) throw new Error(`the conversation is ${prompt.length} tokens, the context holds ${info.nCtx}: start a new one`);
    // Reuse the KV cache for the prefix this conversation already evaluated.
    let keep = 0;
    while (keep < evaluated.length && keep < prompt.length - 1 && evaluated[keep] === prompt[keep]) keep++;
    drv.rewind(keep);
    evaluated = evaluated.slice(0, keep);
    drv.sampler({ temp: temperature, seed: Math.floor(Math.random() * 2 ** 32) });
    drv.accept(prompt);
    drv.streamReset(false);
    const progress = reqs => say({ type: 'progress', token: n, layer: reqs[0].layer + 1, nLayer: info.nLayer + 1 });
    state('thinking');
    await drv.eval(prompt.slice(keep), exec, progress);
    evaluated = prompt.slice();
    let raw = '', shownLen = 0;
    const dec = new TextDecoder();
    while (n < maxTokens) {
      if (stopFlag) { reason = 'stopped'; break; }
      const id = drv.sample();
      if (drv.isEog(id)) { reason = 'end'; break; }
      n++;
      ids.push(id);
      raw += dec.decode(drv.piece(id), { stream: true });
      const v = visible(n === 1 ? raw.trimStart() : raw.replace(/^\s+/, ''));
      if (v.shown.length > shownLen) { say({ type: 'text', text: v.shown.slice(shownLen) }); shownLen = v.shown.length; }
      if (v.stopped) { reason = 'end'; break; }
      if (n >= maxTokens || drv.pos() + 1 >= info.nCtx) { if (n < maxTokens) reason = 'context'; break; }
      await drv.eval([id], exec, progress);
      evaluated.push(id);
    }
    if (reason !== 'end') {
      const tail = raw.replace(/^\s+/, '') + dec.decode(drv.flush());
      if (tail.length > shownLen) say({ type: 'text', text: tail.slice(shownLen) });
    }
    say({ type: 'done', reason, tokens: n, seconds: (performance.now() - t0) / 1000, rounds: drv.rounds() - r0, ids, prompt: Array.from(prompt) });
  } catch (e) {
    // A failed round leaves a batch half done: the cache is rebuilt next time.
    evaluated = [];
    drv = drv && await rebuild();
    say({ type: 'error', message: e.message });
  } finally {
    busy = false;
    state(conn ? 'ready' : 'offline');
  }
}

// After a failure mid-batch the driver cannot take a new eval; a fresh one costs little
// (the fragments it needs are in IndexedDB).
async function rebuild() {
  failAll(new Error('abandoned'));
  const old = drv;
  try {
    const d = await DriverCore.create();
    const man = await getJson([`/api/models/${model.id}/manifest.json`, `/models/${model.id}/manifest.json`]);
    for (const f of man.fragments.filter(f => f.class === 'header')) d.addHeader(await fragment(f.id));
    d.open(man.source.size);
    for (const idx of d.neededFrags()) d.addFrag(await fragment(fragIds[idx]));
    d.start();
    return d;
  } catch {
    return old;
  }
}

self.onmessage = async ev => {
  const m = ev.data;
  try {
    if (m.cmd === 'init') { if (!drv) await init(m.model); else say({ type: 'ready', model: { ...drv.info, name: model.name, id: model.id } }); }
    else if (m.cmd === 'ask') { if (busy) say({ type: 'error', message: 'still answering' }); else await ask(m); }
    else if (m.cmd === 'stop') stopFlag = true;
  } catch (e) {
    state('error', e.message);
    say({ type: 'error', message: e.message });
  }
};
