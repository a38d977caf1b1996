// node-worker.js - the contribute page's Worker: one wasm instance holding this browser's
// fragments and answering COMPUTE/ROWS frames from the relay, so the page never blocks.
//
// Page -> worker: {cmd:'start'} (reopen stored fragments), {cmd:'join', budget},
//                 {cmd:'leave'} (BYE, RELEASE, delete every fragment), {cmd:'status'}.
// Worker -> page: {type:'status', ...} whenever something changes (see post()).
//
// Protocol (docs/protocol.md): HELLO/AUTH with the stored Ed25519 key, HOLDINGS with the
// full verified set, ASSIGN -> download /fragments/<id> with progress, sha256 check
// (WebCrypto), IndexedDB, HOLDINGS; POSSESS -> PROOF; RELEASE -> delete; HEARTBEAT
// every heartbeat_s; reconnect with backoff (1 s doubling to 60 s, +-20%).

import { NodeCore } from './core.js';
import * as wire from './wire.js';
import * as store from './store.js';
import { connect, relayUrl } from './relay.js';

let node = null;
let conn = null;
let want = false;             // the user asked to be joined
let backoff = 1000;
let beat = null, beatId = 1;
const st = {
  state: 'idle', nodeId: null, relay: relayUrl(), error: null, served: 0, failed: 0,
  joinedAt: null, download: null, frags: [], used: 0, budget: 64 << 20, heldModels: {},
};

function post() {
  st.frags.sort((a, b) => a.index - b.index);
  st.used = st.frags.reduce((a, f) => a + f.size, 0);
  self.postMessage({ type: 'status', ...st });
}

function setState(s, error = null) { st.state = s; st.error = error; post(); }

async function loadCore() {
  if (!node) node = await NodeCore.create();
  return node;
}

// Opens every stored node fragment in wasm (a reload downloads nothing again). Once per
// Worker: 'start' and an automatic 'join' arrive together after a reload and share it.
let reopened = null;
function reopen() {
  reopened ??= (async () => {
    await loadCore();
    const frags = [];
    for (const m of await store.listFragments()) {
      if (m.role !== 'node') continue;
      const bytes = await store.getFragment(m.id);
      if (!bytes) { await store.deleteFragment(m.id); continue; }
      try {
        frags.push(describe(m.id, node.open(m.id, new Uint8Array(bytes))));
      } catch (e) {
        await store.deleteFragment(m.id);   // unreadable: forget it, the relay will reassign
      }
    }
    st.frags = frags;
    post();
  })();
  return reopened;
}

// What a fragment holds, for people: model, tensor kind, layer, rows.
function describe(id, info) {
  const items = info.items.map(it => {
    const m = /^blk\.(\d+)\.(.+?)(\.weight|\.bias)?$/.exec(it.name);
    return { name: it.name || '(GGUF header)', layer: m ? +m[1] : null, tensor: m ? m[2] : it.name.replace(/\.weight$/, ''),
             rows: it.row1 - it.row0, row0: it.row0, row1: it.row1, expert: it.expert };
  });
  return { id, index: info.index, cls: info.cls, size: info.size, modelId: info.modelId, items };
}

function holdings(failed = []) {
  const msg = { fragments: st.frags.map(f => f.id), budget: st.budget, used: st.frags.reduce((a, f) => a + f.size, 0) };
  if (failed.length) msg.failed = failed;
  conn?.send(wire.encodeJson(wire.T.HOLDINGS, msg));
}

async function join() {
  want = true;
  await reopen();
  setState('connecting');
  try {
    const ident = await store.identity();
    conn = await connect(st.relay, { roles: ['node'], ident, onFrame, onClose });
  } catch (e) {
    conn = null;
    setState('offline', e.message);
    return retry();
  }
  backoff = 1000;
  st.nodeId = conn.welcome.node_id ?? null;
  st.token = conn.welcome.token ?? null;
  st.joinedAt = st.joinedAt ?? Date.now();
  setState('online');
  holdings();
  const every = Math.max(5, conn.welcome.heartbeat_s ?? 30) * 1000;
  clearInterval(beat);
  beat = setInterval(() => conn?.send(wire.encodeJson(wire.T.HEARTBEAT, { inflight: 0, load: 0, free_bytes: Math.max(0, st.budget - st.used) }, beatId++)), every);
}

function retry() {
  if (!want) return;
  const wait = backoff * (0.8 + 0.4 * Math.random());
  backoff = Math.min(backoff * 2, 60000);
  setTimeout(() => { if (want && !conn) join(); }, wait);
}

function onClose(reason) {
  conn = null;
  clearInterval(beat);
  // Not wanted: leave() is closing and sets 'idle' once the fragments are deleted.
  if (want) { setState('reconnecting', `relay: ${reason}`); retry(); }
}

const queue = [];     // ASSIGNed fragments waiting for download, one at a time
let downloading = false;

async function download(f) {
  const headers = st.token ? { Authorization: `Bearer ${st.token}` } : {};
  const r = await fetch(f.url ?? `/fragments/${f.id}`, { headers });
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  const total = +(r.headers.get('Content-Length') ?? f.size ?? 0);
  const out = new Uint8Array(total || f.size || 0);
  const parts = [];
  let got = 0;
  const rd = r.body.getReader();
  for (;;) {
    const { done, value } = await rd.read();
    if (done) break;
    if (got + value.length <= out.length) out.set(value, got); else parts.push(value);
    got += value.length;
    st.download = { id: f.id, got, total: total || f.size || got };
    post();
  }
  if (got !== out.length || parts.length) throw new Error(`got ${got} bytes, expected ${out.length}`);
  return out;
}

async function pump() {
  if (downloading) return;
  downloading = true;
  const failed = [];
  while (queue.length && want) {
    const f = queue.shift();
    if (st.frags.some(x => x.id === f.id)) continue;
    let ok = false;
    for (let attempt = 0; attempt < 3 && !ok && want; attempt++) {
      try {
        const bytes = await download(f);
        const info = node.open(f.id, bytes);   // header checked by the core
        const d = describe(f.id, info);
        await store.putFragment(f.id, bytes, { cls: d.cls, role: 'node', modelId: d.modelId, index: d.index });
        st.frags.push(d);
        ok = true;
      } catch (e) {
        node.close(f.id);
        st.error = `fragment ${f.id.slice(0, 12)}: ${e.message}`;
        await new Promise(r => setTimeout(r, 2000 << attempt));
      }
    }
    if (!ok) failed.push(f.id);
    st.download = null;
    post();
    holdings(failed);
  }
  downloading = false;
}

async function proof(h) {
  const p = wire.decodeJson(h.payload);
  const bytes = await store.getFragment(p.fragment);
  if (!bytes) { conn?.send(wire.encodeError(h.id, wire.E.NOT_HOLDING, p.fragment)); return; }
  const slice = new Uint8Array(bytes, p.offset, Math.min(p.length, bytes.byteLength - p.offset));
  const msg = new Uint8Array(32 + slice.length);
  msg.set(wire.unhex(p.nonce), 0);
  msg.set(slice, 32);
  const digest = await store.sha256Hex(msg);
  paced(wire.encodeJson(wire.T.PROOF, { fragment: p.fragment, digest }, h.id));
}

// After a reload the relay checks every fragment at once; answering dozens of POSSESS in
// the same millisecond trips its per-peer rate limit, so proofs leave 50 ms apart.
const outq = [];
let pacing = null;
function paced(frame) {
  outq.push(frame);
  pacing ??= setInterval(() => {
    const f = outq.shift();
    if (f) conn?.send(f);
    if (!outq.length) { clearInterval(pacing); pacing = null; }
  }, 50);
}

async function release(ids) {
  for (const id of ids) {
    node?.close(id);
    await store.deleteFragment(id);
    st.frags = st.frags.filter(f => f.id !== id);
  }
  post();
}

function onFrame(h) {
  switch (h.type) {
    case wire.T.COMPUTE:
    case wire.T.ROWS: {
      const out = node.handle(h.raw);
      conn?.send(out);
      if (out[3] === wire.T.RESULT) st.served++; else st.failed++;
      if ((st.served + st.failed) % 16 === 1) post();
      break;
    }
    case wire.T.ASSIGN:
      for (const f of wire.decodeJson(h.payload).fragments ?? []) queue.push(f);
      pump();
      break;
    case wire.T.POSSESS: proof(h); break;
    case wire.T.RELEASE: release(wire.decodeJson(h.payload).fragments ?? []).then(() => holdings()); break;
    case wire.T.BYE: conn?.ws.close(); break;
    default: break;   // heartbeat echoes, STATS, SIGNAL (not used yet)
  }
}

async function leave() {
  want = false;
  queue.length = 0;
  const ids = st.frags.map(f => f.id);
  if (conn) {
    if (ids.length) conn.send(wire.encodeJson(wire.T.RELEASE, { fragments: ids }));
    conn.close('leaving');
    conn = null;
  }
  clearInterval(beat);
  await release(ids);
  st.joinedAt = null;
  st.served = 0;
  setState('idle');
}

self.onmessage = async ev => {
  const m = ev.data;
  try {
    if (m.cmd === 'start') { if (m.relay) st.relay = m.relay; await reopen(); }
    else if (m.cmd === 'join') { if (m.budget) st.budget = m.budget; if (m.relay) st.relay = m.relay; if (!conn) await join(); }
    else if (m.cmd === 'leave') await leave();
    else if (m.cmd === 'status') post();
  } catch (e) {
    setState(st.state, e.message);
  }
};
