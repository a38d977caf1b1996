// relay_ws.test.mjs - essaim-relay over WebSocket with fake nodes and askers
// (docs/protocol.md): join and identity, assignment, download, possession checks and
// random spot checks, compute routing with failover, heartbeat death and re-replication,
// release of surplus replicas (and the native node's answer to RELEASE), SIGNAL
// forwarding, and every kind of bad input of issue 4 item 8 (each gets an ERROR or a
// close, and the relay keeps serving the others) including the ban of flooders, plus wss
// (item 9). Needs build/essaim-relay and build/essaim ($ESSAIM_BUILD to use another build
// folder). Run: node --test tests/js/
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  haveBinaries, makeStore, startRelay, Peer, FakeNode, frame, parse, computePayload, resultPayload, T, E, sleep, makeCert,
  WebSocket, essaimBin, freePort,
} from './relay_util.mjs';

const skip = haveBinaries ? false : 'build/essaim-relay or build/essaim missing (set ESSAIM_BUILD)';
let st;
before(() => { if (!skip) st = makeStore(); });
after(() => st?.cleanup());

// The first fragment holding a plain matrix (rows > 1): id, item index, rows, ne0.
function matrixFrag(manifest) {
  for (const f of manifest.fragments)
    for (const [k, it] of (f.items || []).entries())
      if (it.tensor && it.type === 'F32' && it.row_last > it.row_first)
        return { id: f.id, item: k, rows: it.row_last - it.row_first + 1, ne0: it.bytes / 4 / (it.row_last - it.row_first + 1) };
  throw new Error('no F32 matrix fragment');
}

async function nodeHolding(relay, ids, mode = 'good', budget = undefined) {
  const n = new FakeNode(relay, { mode });
  await n.join(['node']);
  for (const id of ids) await n.fetch(id);
  n.announce(budget);
  return n;
}

// A database of its own, so that lifetime counters start from zero.
let dbs = 0;
const freshDb = () => ['--db', join(st.dir, `relay-${++dbs}.db`)];

const stats = async (relay) => (await fetch(`${relay.http}/api/stats`)).json();

// Waits until pred(stats) holds; returns those stats.
async function statsUntil(relay, pred, ms = 5000, what = 'relay state') {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = await stats(relay);
    if (pred(s)) return s;
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}: ${JSON.stringify(s.counters)}`);
    await sleep(50);
  }
}

async function until(pred, ms, what) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}`);
    await sleep(20);
  }
}

// The bystander of every abuse case: an asker whose STATS keep being answered.
async function assertServes(peer, id) {
  peer.send(frame(T.STATS, id, {}));
  assert.equal((await peer.next((f) => f.type === T.STATS && f.id === BigInt(id))).id, BigInt(id));
}

const fragSize = (id) => st.manifest.fragments.find((f) => f.id === id).size;
const nodeOf = (s, peer) => s.live_nodes.find((x) => x.key === peer.pub.toString('hex'));

async function proofsDone(relay, want) {
  for (let i = 0; i < 100; i++) {
    const s = await (await fetch(`${relay.http}/api/stats`)).json();
    if (s.counters.proofs_ok >= want) return s;
    await sleep(50);
  }
  throw new Error('possession checks did not complete');
}

test('handshake: node identity proven, asker anonymous, bad signature refused', { skip }, async () => {
  const relay = await startRelay(st.store);
  try {
    const n = new Peer(relay.ws);
    const w = await n.join(['node']);
    assert.equal(w.json.node_id, n.nodeId());
    assert.equal(w.json.heartbeat_s, 30);
    assert.equal(w.json.dead_after, 3);
    const a = new Peer(relay.ws);
    const wa = await a.join(['asker']);
    assert.equal(wa.json.node_id, undefined);
    // wrong signature
    const bad = new Peer(relay.ws);
    await bad.open();
    bad.send(frame(T.HELLO, 0, { proto: 1, roles: ['node'], pubkey: bad.pub.toString('hex') }));
    await bad.next((f) => f.type === T.CHALLENGE);
    bad.send(frame(T.AUTH, 0, { sig: '00'.repeat(64) }));
    const er = await bad.next((f) => f.type === T.ERROR);
    assert.equal(er.code, E.UNAUTHORIZED);
    assert.equal((await bad.waitClose()).code, 1008);
    // node without a key
    const nokey = new Peer(relay.ws);
    await nokey.open();
    nokey.send(frame(T.HELLO, 0, { proto: 1, roles: ['node'] }));
    assert.equal((await nokey.next((f) => f.type === T.ERROR)).code, E.UNAUTHORIZED);
    // anything but HELLO first
    const rude = new Peer(relay.ws);
    await rude.open();
    rude.send(frame(T.STATS, 5, {}));
    assert.equal((await rude.next((f) => f.type === T.ERROR)).code, E.UNEXPECTED);
    assert.equal((await rude.waitClose()).code, 1008);
    // a client that asks for no subprotocol still reaches the protocol
    const bare = new WebSocket(relay.ws);
    const got = new Promise((res, rej) => { bare.on('message', (d) => res(parse(d))); bare.on('error', rej); });
    bare.on('open', () => bare.send(frame(T.HELLO, 0, { proto: 1, roles: ['viewer'] })));
    assert.equal((await got).type, T.WELCOME);
    bare.close();
    // the first two are still served
    a.send(frame(T.STATS, 9, {}));
    const s = await a.next((f) => f.type === T.STATS);
    assert.equal(s.id, 9n);
    assert.equal(s.json.nodes.live, 1);
    n.close(); a.close();
  } finally { await relay.stop(); }
});

test('assignment, download with sha256, possession check, compute routed and answered', { skip }, async () => {
  const relay = await startRelay(st.store, ['--replicas', '1']);
  try {
    const n = new FakeNode(relay);
    await n.join(['node']);
    n.announce(); // nothing held, 1 GiB budget: every fragment gets assigned
    const as = await n.next((f) => f.type === T.ASSIGN);
    assert.equal(as.json.fragments.length, st.manifest.fragments.length);
    const a0 = as.json.fragments[0];
    assert.equal(a0.url, `/fragments/${a0.id}`);
    assert.ok(['header', 'always', 'expert'].includes(a0.class));
    for (const a of as.json.fragments) await n.fetch(a.id);
    n.announce();
    const s = await proofsDone(relay, st.manifest.fragments.length);
    assert.equal(s.fragments.lost, 0);
    assert.equal(s.fragments.under_replicated, 0);

    const m = matrixFrag(st.manifest);
    const asker = new Peer(relay.ws);
    await asker.join(['asker']);
    const nIn = m.ne0, r0 = 1, r1 = Math.min(m.rows, 5);
    asker.send(frame(T.COMPUTE, 42, computePayload({ frag: m.id, item: m.item, r0, r1, nIn, nTok: 2 })));
    const res = await asker.next((f) => f.type === T.RESULT);
    assert.equal(res.id, 42n);
    assert.equal(res.n_tok, 2);
    assert.equal(res.n_cols, r1 - r0);
    // the values are the node's dot products, forwarded byte for byte
    const w = n.held.get(m.id);
    assert.ok(w);
    assert.equal(n.computed, 1);
    assert.ok(Number.isFinite(res.body.readFloatLE(8)));
    n.close(); asker.close();
  } finally { await relay.stop(); }
});

test('a node claiming a fragment it lacks fails the possession check (BAD_PROOF)', { skip }, async () => {
  const relay = await startRelay(st.store, ['--replicas', '1']);
  try {
    const m = matrixFrag(st.manifest);
    const liar = await nodeHolding(relay, [m.id], 'liar');
    const er = await liar.next((f) => f.type === T.ERROR && f.code === E.BAD_PROOF);
    assert.match(er.text, /digest/);
    const s = await (await fetch(`${relay.http}/api/stats`)).json();
    assert.equal(s.counters.proofs_bad, 1);
    assert.equal(s.fragments.replicas_live, 0);
    assert.ok(s.live_nodes.every((x) => Array.isArray(x.fragments_held) && x.fragments_held.length === 0));
    // and an id it never heard of
    liar.send(frame(T.HOLDINGS, 0, { fragments: ['ab'.repeat(32)], budget: 1 << 20 }));
    assert.equal((await liar.next((f) => f.type === T.ERROR && f.code === E.UNKNOWN_FRAGMENT)).code, E.UNKNOWN_FRAGMENT);
    liar.close();
  } finally { await relay.stop(); }
});

test('wrong-length result: BAD_SIZE to the node, re-sent to another replica', { skip }, async () => {
  const relay = await startRelay(st.store, ['--replicas', '2']);
  try {
    const m = matrixFrag(st.manifest);
    const bad = await nodeHolding(relay, [m.id], 'wronglen');
    await proofsDone(relay, 1);
    const good = await nodeHolding(relay, [m.id], 'good');
    await proofsDone(relay, 2);
    // both hold the matrix fragment live once proven; assignments they never fetched are not listed
    let held;
    for (let i = 0; i < 100; i++) {
      held = (await (await fetch(`${relay.http}/api/stats`)).json()).live_nodes.map((x) => x.fragments_held);
      if (held.length === 2 && held.every((h) => h.length)) break;
      await sleep(50);
    }
    assert.deepEqual(held, [[m.id], [m.id]]);
    const asker = new Peer(relay.ws);
    await asker.join(['asker']);
    // both idle: whichever is picked first, the asker gets one right answer
    for (let i = 1; i <= 2; i++) {
      asker.send(frame(T.COMPUTE, 100 + i, computePayload({ frag: m.id, item: m.item, r0: 0, r1: 3, nIn: m.ne0 })));
      const res = await asker.next((f) => f.type === T.RESULT || f.type === T.ERROR);
      assert.equal(res.type, T.RESULT, res.text);
      assert.equal(res.id, BigInt(100 + i));
      assert.equal(res.n_cols, 3);
    }
    assert.ok(bad.computed >= 1);
    const er = await bad.next((f) => f.type === T.ERROR && f.code === E.BAD_SIZE);
    assert.ok(er);
    const s = await (await fetch(`${relay.http}/api/stats`)).json();
    assert.ok(s.counters.results_bad >= 1);
    bad.close(); good.close(); asker.close();
  } finally { await relay.stop(); }
});

test('deadline: a silent replica times out, the request goes to another; none left -> NO_REPLICA', { skip }, async () => {
  const relay = await startRelay(st.store, ['--replicas', '2', '--request-timeout', '300']);
  try {
    const m = matrixFrag(st.manifest);
    const silent = await nodeHolding(relay, [m.id], 'silent');
    await proofsDone(relay, 1);
    const asker = new Peer(relay.ws);
    await asker.join(['asker']);
    // only the silent node: times out, nobody left
    asker.send(frame(T.COMPUTE, 7, computePayload({ frag: m.id, item: m.item, r0: 0, r1: 2, nIn: m.ne0 })));
    const e1 = await asker.next((f) => f.type === T.ERROR);
    assert.equal(e1.id, 7n);
    assert.equal(e1.code, E.NO_REPLICA);
    const good = await nodeHolding(relay, [m.id], 'good');
    await proofsDone(relay, 2);
    // the silent node is the least loaded again (it answered nothing): first attempt may go
    // to it; after 300 ms the good one answers
    asker.send(frame(T.COMPUTE, 8, computePayload({ frag: m.id, item: m.item, r0: 0, r1: 2, nIn: m.ne0 })));
    const r = await asker.next((f) => f.id === 8n);
    assert.equal(r.type, T.RESULT, r.text);
    // a late duplicate from the silent node is dropped: answer with its old id
    silent.send(frame(T.RESULT, 1n, resultPayload(1, 2)));
    await sleep(100);
    assert.equal(asker.frames.filter((f) => f.type === T.RESULT).length, 0);
    // the asker's own deadline
    silent.close(); good.close();
    await sleep(200);
    asker.send(frame(T.COMPUTE, 9, computePayload({ frag: m.id, item: m.item, r0: 0, r1: 2, nIn: m.ne0 })));
    assert.equal((await asker.next((f) => f.id === 9n)).code, E.NO_REPLICA);
    asker.close();
  } finally { await relay.stop(); }
});

test('heartbeats: a silent node is dead after the missed beats and its fragments are re-assigned', { skip }, async () => {
  const relay = await startRelay(st.store, ['--replicas', '1', '--heartbeat', '1', '--missed', '2']);
  try {
    const ids = st.manifest.fragments.slice(0, 3).map((f) => f.id);
    const room = st.manifest.fragments.slice(0, 3).reduce((a, f) => a + f.size, 0);
    const quiet = await nodeHolding(relay, ids, 'good', room); // full: gets nothing more
    await proofsDone(relay, 3);
    const quietSince = Date.now(); // its proofs were its last words
    const other = new FakeNode(relay);
    await other.join(['node']);
    other.announce(1 << 30);
    const first = await other.next((f) => f.type === T.ASSIGN); // the fragments nobody held
    assert.equal(first.json.fragments.length, st.manifest.fragments.length - 3);
    const beat = setInterval(() => other.send(frame(T.HEARTBEAT, 1, { inflight: 0 })), 300);
    try {
      const closed = await quiet.waitClose(6000);
      assert.ok(closed, 'silent node not closed');
      assert.equal(closed.code, 1008);
      // dead after 2 missed beats of 1 s, counted from its last frame (a little before quietSince)
      assert.ok(Date.now() - quietSince >= 1500, `closed ${Date.now() - quietSince} ms after its last frame`);
      const again = await other.next((f) => f.type === T.ASSIGN, 3000);
      assert.deepEqual(again.json.fragments.map((f) => f.id).sort(), [...ids].sort());
      const hb = await other.next((f) => f.type === T.HEARTBEAT);
      assert.equal(hb.id, 1n);
      assert.ok(hb.json.t > 0);
    } finally { clearInterval(beat); }
    const s = await (await fetch(`${relay.http}/api/stats`)).json();
    assert.equal(s.counters.nodes_dead, 1);
    other.close();
  } finally { await relay.stop(); }
});

test('bad input: malformed, truncated, oversized, text, wrong version, bad sizes; others unaffected', { skip }, async () => {
  const relay = await startRelay(st.store, ['--replicas', '1']);
  try {
    const m = matrixFrag(st.manifest);
    const node = await nodeHolding(relay, [m.id]);
    await proofsDone(relay, 1);
    const bystander = new Peer(relay.ws);
    await bystander.join(['asker']);

    const a = new Peer(relay.ws);
    await a.join(['asker']);
    // bad magic, then a truncated COMPUTE: two BAD_FRAMEs, connection kept
    a.send(frame(T.STATS, 1, {}, { magic: 'XX' }));
    let e = await a.next((f) => f.type === T.ERROR);
    assert.equal(e.code, E.BAD_FRAME);
    const full = frame(T.COMPUTE, 2, computePayload({ frag: m.id, item: m.item, r0: 0, r1: 2, nIn: m.ne0 }));
    a.send(full.subarray(0, full.length - 5));
    e = await a.next((f) => f.type === T.ERROR);
    assert.equal(e.code, E.BAD_FRAME);
    // activations of the wrong size (n_in says one thing, the bytes another)
    const p = computePayload({ frag: m.id, item: m.item, r0: 0, r1: 2, nIn: m.ne0 });
    a.send(frame(T.COMPUTE, 3, Buffer.concat([p, Buffer.alloc(4)])));
    e = await a.next((f) => f.type === T.ERROR);
    assert.equal(e.code, E.BAD_FRAME);
    assert.equal((await a.waitClose()).code, 1008); // third strike within 60 s

    const b = new Peer(relay.ws);
    await b.join(['asker']);
    // n_in that is not the item's row length: BAD_SIZE; rows past the item: BAD_SIZE
    b.send(frame(T.COMPUTE, 4, computePayload({ frag: m.id, item: m.item, r0: 0, r1: 2, nIn: m.ne0 * 2 })));
    assert.equal((await b.next((f) => f.id === 4n)).code, E.BAD_SIZE);
    b.send(frame(T.COMPUTE, 5, computePayload({ frag: m.id, item: m.item, r0: 0, r1: m.rows + 1, nIn: m.ne0 })));
    assert.equal((await b.next((f) => f.id === 5n)).code, E.BAD_SIZE);
    // unknown fragment
    b.send(frame(T.COMPUTE, 6, computePayload({ frag: 'cd'.repeat(32), item: 0, r0: 0, r1: 1, nIn: 64 })));
    const uf = await b.next((f) => f.id === 6n);
    assert.equal(uf.code, E.UNKNOWN_FRAGMENT);
    assert.match(uf.text, /cdcdcd/);
    // a node-only frame from an asker: UNEXPECTED, kept
    b.send(frame(T.HOLDINGS, 0, { fragments: [], budget: 0 }));
    assert.equal((await b.next((f) => f.type === T.ERROR)).code, E.UNEXPECTED);

    // oversized: refused from its header, close 1009
    const c = new Peer(relay.ws);
    await c.join(['asker']);
    const big = frame(T.HOLDINGS, 0, Buffer.from('{}'), { len: (1 << 20) + 1 });
    c.send(big);
    assert.equal((await c.next((f) => f.type === T.ERROR)).code, E.BAD_FRAME);
    assert.equal((await c.waitClose()).code, 1009);
    // wrong version: close 1002
    const d = new Peer(relay.ws);
    await d.join(['asker']);
    d.send(frame(T.STATS, 1, {}, { version: 9 }));
    assert.equal((await d.next((f) => f.type === T.ERROR)).code, E.UNSUPPORTED_VERSION);
    assert.equal((await d.waitClose()).code, 1002);
    // a text message: close 1003
    const t = new Peer(relay.ws);
    await t.join(['asker']);
    t.sendText('hello?');
    assert.equal((await t.next((f) => f.type === T.ERROR)).code, E.BAD_FRAME);
    assert.equal((await t.waitClose()).code, 1003);
    // garbage JSON in HELLO
    const g = new Peer(relay.ws);
    await g.open();
    g.send(frame(T.HELLO, 0, Buffer.from('{"proto":1,')));
    assert.equal((await g.next((f) => f.type === T.ERROR)).code, E.BAD_FRAME);

    // the bystander and the node were never disturbed
    bystander.send(frame(T.COMPUTE, 77, computePayload({ frag: m.id, item: m.item, r0: 0, r1: 2, nIn: m.ne0 })));
    const ok = await bystander.next((f) => f.id === 77n);
    assert.equal(ok.type, T.RESULT);
    const s = await (await fetch(`${relay.http}/api/stats`)).json();
    assert.ok(s.counters.bad_frames >= 6);
    assert.ok(relay.log().includes('BAD_FRAME'));
    node.close(); bystander.close(); b.close();
  } finally { await relay.stop(); }
});

test('flood: one peer over its rate limit gets RATE_LIMITED, the others are served', { skip }, async () => {
  const relay = await startRelay(st.store, ['--rate', '20', '--burst', '20']);
  try {
    const flood = new Peer(relay.ws);
    await flood.join(['asker']);
    const calm = new Peer(relay.ws);
    await calm.join(['asker']);
    for (let i = 0; i < 200; i++) flood.send(frame(T.STATS, 1000 + i, {}));
    const e = await flood.next((f) => f.type === T.ERROR);
    assert.equal(e.code, E.RATE_LIMITED);
    await sleep(300);
    const answered = flood.frames.filter((f) => f.type === T.STATS).length + 0;
    assert.ok(answered <= 30, `${answered} answered`);
    calm.send(frame(T.STATS, 5, {}));
    assert.equal((await calm.next((f) => f.type === T.STATS)).id, 5n);
    const s = await (await fetch(`${relay.http}/api/stats`)).json();
    assert.ok(s.counters.rate_limited >= 150);
    flood.close(); calm.close();
  } finally { await relay.stop(); }
});

test('TLS: wss and https with a given certificate', { skip }, async () => {
  const tls = makeCert(st.dir);
  const relay = await startRelay(st.store, [], { tls });
  try {
    const a = new Peer(relay.ws);
    const w = await a.join(['asker']);
    assert.equal(w.type, T.WELCOME);
    a.send(frame(T.STATS, 3, {}));
    const s = await a.next((f) => f.type === T.STATS);
    assert.equal(s.json.tls, true);
    a.close();
    // plain ws on the TLS port does not get through
    const plain = new Peer(relay.ws.replace('wss:', 'ws:'));
    await assert.rejects(plain.open());
  } finally { await relay.stop(); }
});

// Three nodes under R = 1, each with a budget of exactly what it holds: `a` holds the
// matrix fragment m, `b` another fragment m2, `filler` all the others. So when b loses m2,
// m2 is the one fragment in need and b the one node with room: re-replication is visible
// as an ASSIGN of m2 to b (which should fetch it anew, protocol.md 6.4).
async function threeHolders(relay) {
  const m = matrixFrag(st.manifest);
  const m2 = st.manifest.fragments.find((f) => f.id !== m.id).id;
  const a = await nodeHolding(relay, [m.id], 'good', fragSize(m.id));
  const b = await nodeHolding(relay, [m2], 'good', fragSize(m2));
  await proofsDone(relay, 2);
  const filler = new FakeNode(relay);
  filler.autoFetch = true;
  await filler.join(['node']);
  filler.announce(st.manifest.fragments.reduce((n, f) => n + f.size, 0) - fragSize(m.id) - fragSize(m2));
  await statsUntil(relay, (x) => x.fragments.lost === 0, 10000, 'every fragment held');
  return { m, m2, a, b, filler };
}

test('spot checks: a node that stops proving a fragment loses it, an honest one keeps it', { skip }, async () => {
  const relay = await startRelay(st.store, ['--replicas', '1', '--spot-check', '1', ...freshDb()]);
  try {
    const { m, m2, a: honest, b: cheat, filler } = await threeHolders(relay);
    const bystander = new Peer(relay.ws);
    await bystander.join(['asker']);
    // the cheat proved m2 at HOLDINGS; from now on it answers wrong digests
    cheat.mode = 'liar';
    const er = await cheat.next((f) => f.type === T.ERROR && f.code === E.BAD_PROOF, 5000);
    assert.match(er.text, /digest/);
    assert.ok(cheat.possessed >= 2, 'the failure came from a spot check, not the first check');
    const again = await cheat.next((f) => f.type === T.ASSIGN, 3000); // re-replication
    assert.deepEqual(again.json.fragments.map((x) => x.id), [m2]);
    // the honest node keeps being checked and keeps its holding
    await until(() => honest.proved >= 3, 8000, 'two spot checks of the honest node');
    const s = await stats(relay);
    assert.deepEqual(nodeOf(s, honest).fragments_held, [m.id]);
    assert.deepEqual(nodeOf(s, cheat).fragments_held, []);
    assert.equal(nodeOf(s, honest).bad_proofs, 0);
    assert.equal(nodeOf(s, cheat).bad_proofs, 1);
    assert.equal(s.counters.proofs_bad, 1);
    assert.equal(s.counters.spot_checks_failed, 1);
    assert.ok(s.counters.spot_checks >= 3, `${s.counters.spot_checks} spot checks`);
    assert.match(relay.log(), new RegExp(`spot check of fragment ${m2.slice(0, 16)} failed \\(wrong digest\\)`));
    // the bystander is served, by the honest node
    bystander.send(frame(T.COMPUTE, 11, computePayload({ frag: m.id, item: m.item, r0: 0, r1: 2, nIn: m.ne0 })));
    assert.equal((await bystander.next((f) => f.id === 11n)).type, T.RESULT);
    honest.close(); cheat.close(); filler.close(); bystander.close();
  } finally { await relay.stop(); }
});

test('RELEASE: a surplus replica is released from the newest node, never below R', { skip }, async () => {
  const relay = await startRelay(st.store, ['--replicas', '1', ...freshDb()]);
  try {
    const m = matrixFrag(st.manifest);
    const old = await nodeHolding(relay, [m.id], 'good', fragSize(m.id));
    await proofsDone(relay, 1);
    await sleep(1100); // a second of uptime: the more stable of the two
    const bystander = new Peer(relay.ws);
    await bystander.join(['asker']);
    // a node comes back with what it held: two live replicas of m, one too many
    const back = await nodeHolding(relay, [m.id], 'good', fragSize(m.id));
    const rel = await back.next((f) => f.type === T.RELEASE, 3000);
    assert.deepEqual(rel.json.fragments, [m.id]);
    assert.equal(back.held.size, 0); // FakeNode dropped it and announced HOLDINGS without it
    const s = await statsUntil(relay, (x) => x.counters.replicas_released === 1, 2000, 'the release');
    assert.deepEqual(nodeOf(s, old).fragments_held, [m.id]);
    assert.deepEqual(nodeOf(s, back).fragments_held, []);
    assert.equal(s.fragments.replicas_live, 1);
    assert.match(relay.log(), new RegExp(`surplus replica of fragment ${m.id.slice(0, 16)} released \\(1 live, R=1\\)`));
    await sleep(600); // a few ticks: nothing else released, the last replica stays
    assert.equal(old.frames.filter((f) => f.type === T.RELEASE).length, 0);
    assert.equal(back.frames.filter((f) => f.type === T.RELEASE).length, 0);
    assert.equal((await stats(relay)).counters.replicas_released, 1);
    bystander.send(frame(T.COMPUTE, 12, computePayload({ frag: m.id, item: m.item, r0: 0, r1: 2, nIn: m.ne0 })));
    assert.equal((await bystander.next((f) => f.id === 12n)).type, T.RESULT);
    assert.equal(old.computed, 1);
    old.close(); back.close(); bystander.close();
  } finally { await relay.stop(); }
});

test('RELEASE to the native node: it deletes the fragment and announces HOLDINGS without it', { skip }, async () => {
  // A stand-in relay that speaks just enough of the protocol to drive `essaim node`.
  const m = matrixFrag(st.manifest);
  const dir = mkdtempSync(join(st.dir, 'native-node-'));
  copyFileSync(join(st.modelDir, `${m.id}.esf`), join(dir, `${m.id}.esf`));
  const port = await freePort();
  const server = new WebSocket.Server({ host: '127.0.0.1', port, handleProtocols: (p) => [...p][0] ?? false });
  const holdings = [];
  let conn = null;
  server.on('connection', (ws) => {
    conn = ws;
    ws.on('message', (d) => {
      const f = parse(d);
      if (f.type === T.HELLO) ws.send(frame(T.CHALLENGE, 0, { nonce: '5a'.repeat(32), relay: 'stand-in' }));
      else if (f.type === T.AUTH) ws.send(frame(T.WELCOME, 0, { node_id: 'feedfeedfeedfeed', heartbeat_s: 30, dead_after: 3, zstd: false, max_inflight: 8, relay: 'stand-in' }));
      else if (f.type === T.HOLDINGS) holdings.push(f.json.fragments);
    });
  });
  await new Promise((res) => server.once('listening', res));
  const node = spawn(essaimBin, ['node', '--relay', `ws://127.0.0.1:${port}/ws`, '--store', dir, '--budget', '1M'],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  node.stderr.on('data', (d) => { log += d; });
  try {
    await until(() => holdings.length >= 1, 10000, 'the first HOLDINGS');
    assert.deepEqual(holdings[0], [m.id]);
    conn.send(frame(T.RELEASE, 0, { fragments: [m.id] }));
    await until(() => holdings.length >= 2, 5000, 'HOLDINGS after RELEASE');
    assert.deepEqual(holdings[1], []);
    assert.equal(existsSync(join(dir, `${m.id}.esf`)), false);
    assert.match(log, new RegExp(`released ${m.id.slice(0, 16)}`));
  } finally {
    node.kill('SIGTERM');
    await new Promise((res) => (node.exitCode !== null ? res() : node.on('exit', res)));
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGNAL: forwarded to the named peer with from set; unknown peer, anonymous sender refused', { skip }, async () => {
  const relay = await startRelay(st.store);
  try {
    const x = new Peer(relay.ws); x.withKey = true;
    const y = new Peer(relay.ws); y.withKey = true;
    await x.join(['asker']);
    await y.join(['node']);
    const bystander = new Peer(relay.ws);
    await bystander.join(['viewer']);
    // offer X -> Y: a forged `from` is overwritten, the rest passes untouched
    const cand = { candidate: 'candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host', sdpMid: '0', sdpMLineIndex: 0 };
    x.send(frame(T.SIGNAL, 0, { to: y.nodeId(), from: 'ffffffffffffffff', kind: 'offer', sdp: 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n' }));
    const offer = await y.next((f) => f.type === T.SIGNAL);
    assert.equal(offer.json.from, x.nodeId());
    assert.equal(offer.json.to, y.nodeId());
    assert.equal(offer.json.kind, 'offer');
    assert.equal(offer.json.sdp, 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n');
    // answer and a candidate back Y -> X
    y.send(frame(T.SIGNAL, 0, { to: x.nodeId(), kind: 'answer', sdp: 'v=0\r\n' }));
    y.send(frame(T.SIGNAL, 0, { to: x.nodeId(), kind: 'candidate', candidate: cand }));
    const ans = await x.next((f) => f.type === T.SIGNAL && f.json.kind === 'answer');
    assert.equal(ans.json.from, y.nodeId());
    const c = await x.next((f) => f.type === T.SIGNAL && f.json.kind === 'candidate');
    assert.deepEqual(c.json.candidate, cand);
    assert.equal(c.json.from, y.nodeId());
    // a peer that is not connected, and oneself: UNKNOWN_PEER, connection kept
    x.send(frame(T.SIGNAL, 3, { to: '0123456789abcdef', kind: 'offer', sdp: 'v=0' }));
    const unk = await x.next((f) => f.type === T.ERROR);
    assert.equal(unk.code, E.UNKNOWN_PEER);
    assert.equal(unk.id, 3n);
    x.send(frame(T.SIGNAL, 4, { to: x.nodeId(), kind: 'offer' }));
    assert.equal((await x.next((f) => f.type === T.ERROR)).code, E.UNKNOWN_PEER);
    // a peer that left is unknown too
    y.close();
    await y.waitClose();
    await sleep(100);
    x.send(frame(T.SIGNAL, 5, { to: y.nodeId(), kind: 'bye' }));
    assert.equal((await x.next((f) => f.id === 5n)).code, E.UNKNOWN_PEER);
    // without `to`: BAD_FRAME; from a peer without a node_id: UNEXPECTED
    x.send(frame(T.SIGNAL, 6, { kind: 'offer' }));
    assert.equal((await x.next((f) => f.id === 6n)).code, E.BAD_FRAME);
    bystander.send(frame(T.SIGNAL, 7, { to: x.nodeId(), kind: 'offer' }));
    assert.equal((await bystander.next((f) => f.id === 7n)).code, E.UNEXPECTED);
    assert.equal(x.frames.filter((f) => f.type === T.SIGNAL).length, 0); // nothing reached x
    await assertServes(bystander, 8);
    await assertServes(x, 9);
    x.close(); bystander.close();
  } finally { await relay.stop(); }
});

// The two slow cases (about 12 s each: a 10 s flood, a 10 s proof deadline) side by side.
test('slow abuse cases', { skip, concurrency: true }, async (t) => {
  await Promise.all([
    t.test('flood: 10 s over the limit closes 1008 and bans the key or address; others served; the ban ends', async () => {
      const relay = await startRelay(st.store, ['--rate', '20', '--burst', '20', '--ban', '3', ...freshDb()]);
      try {
        const bystander = new Peer(relay.ws);
        await bystander.join(['asker']);
        const anon = new Peer(relay.ws);
        await anon.join(['asker']);
        const keyed = new Peer(relay.ws); keyed.withKey = true;
        await keyed.join(['asker']);
        // 100 frames a second each, five times their limit, until they are told they are
        // banned (flooding on would have the kernel reset the socket when the relay closes
        // it with unread frames, and the close frame could be lost: 1006 instead of 1008)
        const t0 = Date.now();
        const told = (p) => p.frames.some((f) => f.type === T.ERROR && /banned/.test(f.text));
        const flood = (p) => setInterval(() => { if (!p.closed && !told(p)) for (let i = 0; i < 10; i++) p.send(frame(T.STATS, 1, {})); }, 100);
        const timers = [flood(anon), flood(keyed)];
        let closes;
        try {
          await sleep(3000);
          await assertServes(bystander, 5); // served during the flood
          closes = await Promise.all([anon.waitClose(15000), keyed.waitClose(15000)]);
        } finally { timers.forEach(clearInterval); }
        // 1008 after the ban notice. Rarely (about 1 run in 10 on a loaded machine) a peer's
        // connection is reset instead (1006) and the notice is lost with it; the refusals
        // below are then what shows the ban.
        for (const [i, p] of [anon, keyed].entries()) {
          const c = closes[i];
          assert.ok(c && (c.code === 1008 || c.code === 1006), `closed with ${c && c.code}`);
          if (c.code === 1008)
            assert.ok(p.frames.some((f) => f.type === T.ERROR && f.code === E.RATE_LIMITED && /banned for 3 s/.test(f.text)),
                      'the ban notice before the close');
        }
        assert.ok(Date.now() - t0 >= 9000, 'closed before 10 s of flooding');
        // within the ban: the same key, and an anonymous peer from the same address, refused
        const sameKey = new Peer(relay.ws, { identity: keyed });
        await sameKey.open();
        sameKey.send(frame(T.HELLO, 0, { proto: 1, roles: ['asker'], pubkey: keyed.pub.toString('hex') }));
        const e1 = await sameKey.next((f) => f.type === T.ERROR);
        assert.equal(e1.code, E.UNAUTHORIZED);
        assert.match(e1.text, /key banned/);
        assert.equal((await sameKey.waitClose()).code, 1008);
        const sameAddr = new Peer(relay.ws);
        await sameAddr.open();
        sameAddr.send(frame(T.HELLO, 0, { proto: 1, roles: ['asker'] }));
        const e2 = await sameAddr.next((f) => f.type === T.ERROR);
        assert.equal(e2.code, E.UNAUTHORIZED);
        assert.match(e2.text, /address banned/);
        assert.equal((await sameAddr.waitClose()).code, 1008);
        // another key from that address is somebody else
        const other = new Peer(relay.ws); other.withKey = true;
        assert.equal((await other.join(['asker'])).type, T.WELCOME);
        await assertServes(bystander, 6);
        // after the ban both come back
        await sleep(3200);
        const keyBack = new Peer(relay.ws, { identity: keyed }); keyBack.withKey = true;
        assert.equal((await keyBack.join(['asker'])).json.node_id, keyed.nodeId());
        const anonBack = new Peer(relay.ws);
        assert.equal((await anonBack.join(['asker'])).type, T.WELCOME);
        await assertServes(anonBack, 7);
        const s = await stats(relay);
        assert.equal(s.counters.bans, 2);
        assert.equal(s.counters.banned_refused, 2);
        assert.match(relay.log(), /over the rate limit for 10 s: closing; key [0-9a-f]{16} banned for 3 s/);
        assert.match(relay.log(), /over the rate limit for 10 s: closing; address \S*127\.0\.0\.1 banned for 3 s/);
        for (const p of [bystander, other, keyBack, anonBack]) p.close();
      } finally { await relay.stop(); }
    }),
    t.test('spot check unanswered: after 10 s BAD_PROOF, holding dropped, re-replicated; the others serve', async () => {
      const relay = await startRelay(st.store, ['--replicas', '1', '--spot-check', '1', ...freshDb()]);
      try {
        const { m, m2, a: good, b: mute, filler } = await threeHolders(relay);
        const bystander = new Peer(relay.ws);
        await bystander.join(['asker']);
        mute.mode = 'mute';
        const beat = setInterval(() => mute.send(frame(T.HEARTBEAT, 1, { inflight: 0 })), 1000);
        try {
          const er = await mute.next((f) => f.type === T.ERROR && f.code === E.BAD_PROOF, 16000);
          assert.match(er.text, /no PROOF within 10 s/);
          const again = await mute.next((f) => f.type === T.ASSIGN, 3000);
          assert.deepEqual(again.json.fragments.map((x) => x.id), [m2]);
        } finally { clearInterval(beat); }
        const s = await stats(relay);
        assert.deepEqual(nodeOf(s, mute).fragments_held, []);
        assert.equal(nodeOf(s, mute).bad_proofs, 1);
        assert.deepEqual(nodeOf(s, good).fragments_held, [m.id]);
        assert.equal(s.counters.spot_checks_failed, 1);
        assert.match(relay.log(), new RegExp(`spot check of fragment ${m2.slice(0, 16)} failed \\(no PROOF within 10 s\\)`));
        bystander.send(frame(T.COMPUTE, 13, computePayload({ frag: m.id, item: m.item, r0: 0, r1: 2, nIn: m.ne0 })));
        assert.equal((await bystander.next((f) => f.id === 13n)).type, T.RESULT);
        good.close(); mute.close(); filler.close(); bystander.close();
      } finally { await relay.stop(); }
    }),
  ]);
});
