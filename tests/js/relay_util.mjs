// relay_util.mjs - what the relay's JS tests share: starting essaim-relay on a free port
// with a store made by `essaim fragment`, the frame codec of docs/protocol.md in a few
// lines, and a WebSocket peer (node, asker or raw) with Ed25519 identity and awaitable
// frames. Binaries come from $ESSAIM_BUILD (default build/).
import { createRequire } from 'node:module';
import { spawn, execFileSync } from 'node:child_process';
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(join(root, 'tests', 'web', 'package.json'));
export const WebSocket = require('ws');

export const build = process.env.ESSAIM_BUILD || join(root, 'build');
export const relayBin = join(build, 'essaim-relay');
export const essaimBin = join(build, 'essaim');
export const haveBinaries = existsSync(relayBin) && existsSync(essaimBin);

export const T = { HELLO: 1, CHALLENGE: 2, AUTH: 3, WELCOME: 4, HEARTBEAT: 5, HOLDINGS: 6, ASSIGN: 7, RELEASE: 8,
  POSSESS: 9, PROOF: 10, COMPUTE: 11, ROWS: 12, RESULT: 13, ERROR: 14, SIGNAL: 15, STATS: 16, BYE: 17 };
export const E = { BAD_FRAME: 1, UNSUPPORTED_VERSION: 2, UNEXPECTED: 3, UNAUTHORIZED: 4, UNKNOWN_FRAGMENT: 5,
  NOT_HOLDING: 6, BAD_SIZE: 7, RATE_LIMITED: 8, DEADLINE: 9, NO_REPLICA: 10, OVERLOADED: 11, BAD_PROOF: 12,
  UNKNOWN_PEER: 13 };
const JSON_TYPES = new Set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 16, 17]);

export function frame(type, id, payload, { version = 1, flags = null, magic = 'ES', len = null } = {}) {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(JSON.stringify(payload ?? {}));
  const h = Buffer.alloc(20);
  h.write(magic, 0, 'latin1');
  h[2] = version;
  h[3] = type;
  h.writeUInt16LE(flags ?? (JSON_TYPES.has(type) ? 2 : 0), 4);
  h.writeBigUInt64LE(BigInt(id), 8);
  h.writeUInt32LE(len ?? body.length, 16);
  return Buffer.concat([h, body]);
}

export function parse(buf) {
  const type = buf[3], id = buf.readBigUInt64LE(8), len = buf.readUInt32LE(16);
  const body = buf.subarray(20, 20 + len);
  const f = { type, id, body };
  if (JSON_TYPES.has(type)) f.json = JSON.parse(body.toString('utf8'));
  if (type === T.ERROR) { f.code = body.readUInt16LE(0); f.text = body.subarray(2).toString('utf8'); }
  if (type === T.RESULT) { f.n_tok = body.readUInt32LE(0); f.n_cols = body.readUInt32LE(4); }
  return f;
}

export function computePayload({ frag, item, r0, r1, nIn, nTok = 1, deadline = 5000, act = null }) {
  const p = Buffer.alloc(64);
  Buffer.from(frag, 'hex').copy(p, 0);
  p.writeUInt32LE(item, 32); p.writeUInt32LE(r0, 36); p.writeUInt32LE(r1, 40);
  p.writeUInt32LE(0, 44); /* F32 */ p.writeUInt32LE(nTok, 48); p.writeUInt32LE(nIn, 52);
  p.writeUInt32LE(deadline, 56);
  if (!act) { act = Buffer.alloc(nTok * nIn * 4); for (let i = 0; i < nTok * nIn; i++) act.writeFloatLE(((i % 7) - 3) / 4, 4 * i); }
  return Buffer.concat([p, act]);
}

export function resultPayload(nTok, nCols, values) {
  const p = Buffer.alloc(8 + 4 * nTok * nCols);
  p.writeUInt32LE(nTok, 0); p.writeUInt32LE(nCols, 4);
  for (let i = 0; i < nTok * nCols; i++) p.writeFloatLE(values ? values[i] : i, 8 + 4 * i);
  return p;
}

export async function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); });
    s.on('error', rej);
  });
}

// A store with one model: stories260K cut into 64K fragments (or a synthetic model).
export function makeStore() {
  const dir = mkdtempSync(join(tmpdir(), 'essaim-relay-'));
  const frags = join(dir, 'frags'), store = join(dir, 'store');
  let gguf = join(process.env.ESSAIM_TEST_MODELS || join(root, '..', 'shared', 'models'), 'stories260K.gguf');
  if (!existsSync(gguf)) {
    gguf = join(dir, 'synth.gguf');
    execFileSync(essaimBin, ['synth', '-o', gguf, '--type', 'F32', '--layers', '2', '--embd', '64', '--heads', '4',
      '--ff', '128', '--vocab-size', '320', '--ctx', '64'], { stdio: 'ignore' });
  }
  execFileSync(essaimBin, ['fragment', gguf, '-o', frags, '--max-size', '64K'], { stdio: 'ignore' });
  mkdirSync(store);
  execFileSync(relayBin, ['--store', store, '--add-model', frags], { stdio: 'ignore' });
  const model = readdirSync(store).find((n) => n.length === 64);
  const manifest = JSON.parse(readFileSync(join(store, model, 'manifest.json'), 'utf8'));
  return { dir, store, modelDir: join(store, model), manifest, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

// Each relay gets a database of its own unless args name one: a relay restarted on a
// database whose nodes held fragments waits for them (--settle), which only the tests of
// restarts want.
let dbSeq = 0;
export async function startRelay(store, args = [], { tls = null } = {}) {
  const port = await freePort();
  const a = ['--listen', `127.0.0.1:${port}`, '--store', store, ...args];
  if (!args.includes('--db')) a.push('--db', join(store, `relay-${process.pid}-${++dbSeq}.db`));
  if (tls) a.push('--tls-cert', tls.cert, '--tls-key', tls.key);
  const proc = spawn(relayBin, a, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  await new Promise((res, rej) => {
    let out = '';
    proc.stdout.on('data', (d) => { out += d; if (out.includes('listening')) res(); });
    proc.on('exit', (c) => rej(new Error(`essaim-relay exited ${c}: ${log}`)));
  });
  const scheme = tls ? 'https' : 'http';
  return {
    port, proc, log: () => log,
    http: `${scheme}://127.0.0.1:${port}`, ws: `${tls ? 'wss' : 'ws'}://127.0.0.1:${port}/ws`,
    stop: () => new Promise((res) => { if (proc.exitCode !== null) return res(proc.exitCode); proc.on('exit', (c) => res(c)); proc.kill('SIGTERM'); }),
  };
}

// One WebSocket peer: frames queue up; next(pred) waits for the first one matching.
// opts.identity: another Peer whose key pair to use (the same identity reconnecting).
export class Peer {
  constructor(url, opts = {}) {
    const { identity, ...wsOpts } = opts;
    this.frames = [];
    this.waiters = [];
    this.closed = null;
    this.ws = new WebSocket(url, 'essaim.v1', { rejectUnauthorized: false, ...wsOpts });
    this.ws.on('message', (d, isBinary) => { if (isBinary) this._push(parse(d)); });
    this.ws.on('close', (code, reason) => { this.closed = { code, reason: reason.toString() }; this._wake(); });
    this.ws.on('error', () => {});
    if (identity) {
      this.pub = identity.pub;
      this.priv = identity.priv;
    } else {
      const { publicKey, privateKey } = generateKeyPairSync('ed25519');
      this.pub = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
      this.priv = privateKey;
    }
  }
  open() {
    if (this.ws.readyState === WebSocket.OPEN) return Promise.resolve(); // opened before anyone asked
    return new Promise((res, rej) => { this.ws.once('open', res); this.ws.once('error', rej); });
  }
  send(buf) { this.ws.send(buf, { binary: true }); }
  sendText(s) { this.ws.send(s); }
  _push(f) { this.frames.push(f); this._wake(); }
  _wake() { for (const w of this.waiters.splice(0)) w(); }
  async next(pred = () => true, ms = 5000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      if (this.closed) throw new Error(`closed ${this.closed.code} ${this.closed.reason} while waiting`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timeout waiting for a frame');
      await new Promise((res) => { const t = setTimeout(res, left); this.waiters.push(() => { clearTimeout(t); res(); }); });
    }
  }
  async waitClose(ms = 5000) {
    const deadline = Date.now() + ms;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }
  nodeId() { return createHash('sha256').update(this.pub).digest().subarray(0, 8).toString('hex'); }
  async join(roles = ['node']) {
    await this.open();
    const withKey = roles.includes('node') || this.withKey;
    this.send(frame(T.HELLO, 0, { proto: 1, roles, client: 'relay-test', platform: 'native', ...(withKey ? { pubkey: this.pub.toString('hex') } : {}) }));
    if (withKey) {
      const ch = await this.next((f) => f.type === T.CHALLENGE);
      const msg = Buffer.concat([Buffer.from('essaim-auth-v1\0', 'latin1'), Buffer.from(ch.json.nonce, 'hex'), this.pub]);
      this.send(frame(T.AUTH, 0, { sig: sign(null, msg, this.priv).toString('hex') }));
    }
    this.welcome = await this.next((f) => f.type === T.WELCOME);
    return this.welcome;
  }
  close() { try { this.ws.close(); } catch {} }
}

// A well-behaved fake node: keeps the fragments it was assigned (downloaded over HTTP and
// hash-checked), answers POSSESS from them, COMPUTE with real F32 dot products, and
// RELEASE by dropping the fragments and announcing what is left. A test may change
// `mode` on the way: 'silent' never answers COMPUTE, 'wronglen' answers it with one
// column too many, 'liar' answers POSSESS with the digest of zeros, 'mute' never answers
// POSSESS.
export class FakeNode extends Peer {
  constructor(relay, opts = {}) {
    super(relay.ws);
    this.relay = relay;
    this.held = new Map(); // id -> Buffer (file bytes)
    this.mode = opts.mode || 'good';
    this.budget = 1 << 30;
    this.computed = 0;
    this.possessed = 0; // POSSESS frames received
    this.proved = 0;    // ... answered with the right digest
    this.ws.on('message', (d, isBinary) => { if (isBinary) this._auto(parse(d)).catch(() => {}); });
  }
  async _auto(f) {
    if (f.type === T.POSSESS) {
      this.possessed++;
      if (this.mode === 'mute') return;
      const file = this.held.get(f.json.fragment);
      if (!file) return this.send(frame(T.ERROR, f.id, Buffer.concat([u16(E.NOT_HOLDING), Buffer.from('not held')])));
      let bytes = file.subarray(f.json.offset, f.json.offset + f.json.length);
      if (this.mode === 'liar') bytes = Buffer.alloc(bytes.length);
      else this.proved++;
      const digest = createHash('sha256').update(Buffer.from(f.json.nonce, 'hex')).update(bytes).digest('hex');
      this.send(frame(T.PROOF, f.id, { fragment: f.json.fragment, digest }));
    } else if (f.type === T.RELEASE) {
      for (const id of f.json.fragments) this.held.delete(id);
      this.announce(this.budget);
    } else if (f.type === T.ASSIGN && this.autoFetch) {
      for (const a of f.json.fragments) await this.fetch(a.id);
      this.announce();
    } else if (f.type === T.COMPUTE) {
      this.computed++;
      if (this.mode === 'silent') return;
      const b = f.body, frag = b.subarray(0, 32).toString('hex'), item = b.readUInt32LE(32);
      const r0 = b.readUInt32LE(36), r1 = b.readUInt32LE(40), nTok = b.readUInt32LE(48), nIn = b.readUInt32LE(52);
      const cols = r1 - r0, vals = new Float32Array(nTok * cols);
      const file = this.held.get(frag);
      const w = itemRows(file, item);
      for (let t = 0; t < nTok; t++)
        for (let c = 0; c < cols; c++) {
          let s = 0;
          for (let k = 0; k < nIn; k++) s += w.readFloatLE(((r0 + c) * nIn + k) * 4) * b.readFloatLE(64 + (t * nIn + k) * 4);
          vals[t * cols + c] = s;
        }
      const extra = this.mode === 'wronglen' ? 1 : 0;
      this.send(frame(T.RESULT, f.id, resultPayload(nTok, cols + extra, this.mode === 'wronglen' ? null : vals)));
    }
  }
  async fetch(id) {
    const r = await fetch(`${this.relay.http}/fragments/${id}`);
    const buf = Buffer.from(await r.arrayBuffer());
    if (createHash('sha256').update(buf).digest('hex') !== id) throw new Error(`fragment ${id} hash mismatch`);
    this.held.set(id, buf);
  }
  announce(budget = this.budget) {
    this.budget = budget;
    this.send(frame(T.HOLDINGS, 0, { fragments: [...this.held.keys()], budget, used: 0 }));
  }
}

export function u16(v) { const b = Buffer.alloc(2); b.writeUInt16LE(v); return b; }

// The bytes of item `item` of a fragment file: payload starts at header_bytes (u32 at 52);
// items lie back to back in the order of the header's item table.
export function itemRows(file, item) {
  const headerBytes = file.readUInt32LE(52), nItems = file.readUInt32LE(48);
  let p = 72;
  for (let i = 0; i < nItems; i++) {
    // item: tensor u32, type u32, expert u32, ne0 u64, row0 u64, row1 u64, src_offset u64,
    // bytes u64 (44), frag_offset u64 (52), name length u16 (60), name
    const bytes = Number(file.readBigUInt64LE(p + 44)), fragOff = Number(file.readBigUInt64LE(p + 52));
    const nameLen = file.readUInt16LE(p + 60);
    if (i === item) return file.subarray(headerBytes + fragOff, headerBytes + fragOff + bytes);
    p += 62 + nameLen;
  }
  throw new Error('no such item');
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function makeCert(dir) {
  const key = join(dir, 'key.pem'), cert = join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '30',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
  return { key, cert };
}

export { writeFileSync };
