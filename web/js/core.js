// core.js - JS faces of the wasm core's two ABIs (wasm/abi_node.c, wasm/abi_driver.c), shared
// by the Workers and the Node tests. Each class owns one wasm instance (one per Worker:
// this wasi-libc has no threads) and hides pointers: callers pass and get typed arrays.
//
// Views of wasm memory are re-made after every call that may allocate (memory.grow
// detaches the old ArrayBuffer), which is why helpers below take fresh views each time.

import { loadCore } from './wasi.js';
import * as wire from './wire.js';

const enc = new TextEncoder();
const dec = new TextDecoder();
export const CLASS_NAME = ['header', 'always', 'expert'];
export const ROUND = 1, WAIT = 2, DONE = 3;

class Core {
  constructor(core) { this.core = core; this.X = core.exports; this._s = this.X.ess_alloc(4 * 32); }
  get buf() { return this.core.memory.buffer; }
  u8(p, n) { return new Uint8Array(this.buf, p, n); }
  u32(p, n) { return new Uint32Array(this.buf, p, n); }
  i32(p, n) { return new Int32Array(this.buf, p, n); }
  f32(p, n) { return new Float32Array(this.buf, p, n); }
  cstr(p) { const m = new Uint8Array(this.buf); let e = p; while (m[e]) e++; return dec.decode(m.subarray(p, e)); }
  // Copies bytes into a fresh ess_alloc block; returns its pointer.
  put(bytes) {
    const p = this.X.ess_alloc(bytes.length || 1);
    if (!p) throw new Error(`wasm: out of memory for ${bytes.length} bytes`);
    this.u8(p, bytes.length).set(bytes);
    return p;
  }
  scratchU32(n) { return this.u32(this._s, n); }  // 32 u32 slots for the *_info calls
}

// Where a page finds the core: web/essaim.wasm when deployed (a copy of build/wasm/essaim.wasm),
// else the build folder when the repository root is served.
export const WASM_URLS = ['/essaim.wasm', '/build/wasm/essaim.wasm'];
// The same core built with relaxed SIMD (about twice as fast on quantized dots), tried first
// where the engine runs it; it is optional, a server without it falls through to the above.
export const WASM_RELAXED_URLS = ['/essaim-relaxed.wasm', '/build/wasm/essaim-relaxed.wasm'];

// A module of one function doing i16x8.relaxed_dot_i8x16_i7x16_s on two v128 locals: it
// validates only where relaxed SIMD is on (Chromium >= 114; Node 20 behind a V8 flag).
const RELAXED_PROBE = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 1, 4, 1, 0x60, 0, 0, 3, 2, 1, 0,
                                      0x0a, 0x0e, 1, 0x0c, 1, 2, 0x7b, 0x20, 0, 0x20, 1, 0xfd, 0x92, 2, 0x1a, 0x0b]);
export const hasRelaxedSimd = () => { try { return WebAssembly.validate(RELAXED_PROBE); } catch { return false; } };
export const defaultWasmUrls = () => (hasRelaxedSimd() ? [...WASM_RELAXED_URLS, ...WASM_URLS] : WASM_URLS);

export async function fetchWasm(urls = defaultWasmUrls()) {
  for (const u of urls) {
    try {
      const r = await fetch(u);
      if (!r.ok) continue;
      const b = await r.arrayBuffer();
      // a wasm module, not a server's fallback page for a path it does not have
      if (b.byteLength > 8 && new DataView(b).getUint32(0, true) === 0x6d736100) return b;
    } catch { /* try the next */ }
  }
  throw new Error(`the wasm core is not served (tried ${urls.join(', ')})`);
}

async function instantiate(wasm) {
  return loadCore(wasm instanceof ArrayBuffer || ArrayBuffer.isView(wasm) ? wasm : await fetchWasm(wasm ? [wasm] : undefined),
                  { stdout: () => {}, stderr: s => console.warn('[wasm]', s) });
}

// ---- node: fragments held, compute on them ----

export class NodeCore extends Core {
  static async create(wasm) { return new NodeCore(await instantiate(wasm)); }
  constructor(core) { super(core); this.n = this.X.ess_node_new(); this.frags = new Map(); }

  // Opens a fragment file (Uint8Array) under its id (hex sha256). Returns what it holds:
  // {id, index, cls, items: [{tensor, name, type, expert, ne0, row0, row1, bytes, offset (in the
  // payload)}], size, headerBytes}.
  open(id, bytes) {
    if (this.frags.has(id)) return this.frags.get(id).info;
    const p = this.put(bytes);
    const f = this.X.ess_node_frag_open(this.n, p, bytes.length);
    if (!f) { const m = this.cstr(this.X.ess_node_err(this.n)); this.X.ess_free(p); throw new Error(m); }
    this.X.ess_node_frag_info(f, this._s);
    const fi = Array.from(this.scratchU32(12));
    const items = [];
    for (let i = 0; i < fi[2]; i++) {
      this.X.ess_node_item_info(f, i, this._s);
      const v = Array.from(this.scratchU32(10));
      items.push({ tensor: v[0], type: v[1], expert: v[2], ne0: v[3], row0: v[4], row1: v[5], bytes: v[6],
                   name: dec.decode(this.u8(v[7], v[8]).slice()), offset: v[9] });
    }
    const info = { id, index: fi[0], cls: CLASS_NAME[fi[1]] ?? '?', items, size: bytes.length, headerBytes: fi[3],
                   modelId: wire.hex(this.u8(fi[10], 32)) };
    this.frags.set(id, { p, f, info });
    return info;
  }

  close(id) {
    const h = this.frags.get(id);
    if (!h) return;
    this.X.ess_node_frag_close(h.f);
    this.X.ess_free(h.p);
    this.frags.delete(id);
  }

  // Answers a COMPUTE or ROWS frame (Uint8Array). Returns the RESULT or ERROR frame to
  // send back (a copy). A frame for a fragment not held gets NOT_HOLDING.
  handle(frame) {
    let hd;
    try { hd = wire.decodeHeader(frame); } catch (e) { return wire.encodeError(0, wire.E.BAD_FRAME, e.message); }
    if ((hd.type !== wire.T.COMPUTE && hd.type !== wire.T.ROWS) || hd.payload.length < 32)
      return wire.encodeError(hd.id, wire.E.UNEXPECTED, `a node answers COMPUTE and ROWS, not ${hd.name}`);
    const id = wire.hex(hd.payload.subarray(0, 32));
    const h = this.frags.get(id);
    if (!h) return wire.encodeError(hd.id, wire.E.NOT_HOLDING, `fragment ${id.slice(0, 12)} is not held here`);
    const p = this.put(frame);
    const n = this.X.ess_node_frame(this.n, h.f, p, frame.length);
    this.X.ess_free(p);
    if (!n) return wire.encodeError(hd.id, wire.E.INTERNAL, 'out of memory');
    return this.u8(this.X.ess_node_out(this.n), n).slice();
  }
}

// ---- the fragmenter (tests, and a page that seeds a model it has as a file) ----

export function fragmentGguf(coreObj, gguf, maxSize) {
  const c = coreObj;
  const p = c.put(gguf);
  const fr = c.X.ess_fragger_new(p, gguf.length, maxSize);
  const err = c.cstr(c.X.ess_fragger_err(fr));
  if (err) { c.X.ess_fragger_free(fr); c.X.ess_free(p); throw new Error(err); }
  const out = [];
  const n = c.X.ess_fragger_count(fr);
  for (let i = 0; i < n; i++) {
    const len = c.X.ess_fragger_file(fr, i);
    if (!len) { const m = c.cstr(c.X.ess_fragger_err(fr)); c.X.ess_fragger_free(fr); c.X.ess_free(p); throw new Error(m); }
    out.push(c.u8(c.X.ess_fragger_data(fr), len).slice());
  }
  const modelId = wire.hex(c.u8(c.X.ess_fragger_model_id(fr), 32));
  c.X.ess_fragger_free(fr);
  c.X.ess_free(p);
  return { modelId, files: out };
}

// ---- the asker ----

export class DriverCore extends Core {
  static async create(wasm) { return new DriverCore(await instantiate(wasm)); }
  constructor(core) { super(core); this.h = this.X.ess_drv_new(); this.REC = this.X.ess_drv_rec_size(); }
  err() { return this.cstr(this.X.ess_drv_err(this.h)); }
  check(rc, what) { if (rc < 0) throw new Error(`${what}: ${this.err()}`); return rc; }

  addHeader(bytes) {
    const p = this.put(bytes);
    const rc = this.X.ess_drv_add_header(this.h, p, bytes.length);
    this.X.ess_free(p);
    this.check(rc, 'header fragment');
  }

  // sourceSize: the GGUF's size (manifest.source.size). Returns the model's figures.
  open(sourceSize, { nCtx = 0, maxBatch = 0 } = {}) {
    this.check(this.X.ess_drv_open(this.h, sourceSize, nCtx, maxBatch), 'open');
    this.X.ess_drv_info(this.h, this._s);
    const v = Array.from(new Int32Array(this.buf, this._s, 16));
    this.info = { nLayer: v[0], nEmbd: v[1], nVocab: v[2], nCtx: v[3], nFrags: v[4], bos: v[5], eos: v[6],
                  nHead: v[8], nHeadKv: v[9], nFf: v[10], nExpert: v[11], maxBatch: v[12], addBos: v[14],
                  arch: this.cstr(this.X.ess_drv_arch(this.h)), template: this.cstr(this.X.ess_drv_template(this.h)),
                  modelId: wire.hex(this.u8(v[15], 32)) };
    return this.info;
  }

  // Fragment indices the asker must hold itself (norms and other small tensors).
  neededFrags() {
    const out = [];
    for (let i = 0; i < this.info.nFrags; i++) {
      this.X.ess_drv_frag_info(this.h, i, this._s);
      if (this.scratchU32(6)[1]) out.push(i);
    }
    return out;
  }

  addFrag(bytes) { this.check(this.X.ess_drv_add_frag(this.h, this.put(bytes), bytes.length), 'fragment'); }
  start() { this.check(this.X.ess_drv_start(this.h), 'driver'); }

  tokensOut(n) { return Array.from(this.i32(this.X.ess_drv_tokens(this.h), n)); }

  encode(text, addSpecial = true, parseSpecial = false) {
    const b = enc.encode(text), p = this.put(b);
    const n = this.X.ess_drv_encode(this.h, p, b.length, addSpecial ? 1 : 0, parseSpecial ? 1 : 0);
    this.X.ess_free(p);
    return this.tokensOut(this.check(n, 'tokenize'));
  }

  // messages: [{role, content}] -> prompt text through the model's chat template.
  chat(messages, addAssistant = true) {
    const parts = [];
    for (const m of messages) parts.push(enc.encode(m.role), [0], enc.encode(m.content), [0]);
    const len = parts.reduce((a, x) => a + x.length, 0), all = new Uint8Array(len);
    let at = 0;
    for (const x of parts) { all.set(x, at); at += x.length; }
    const p = this.put(all);
    const n = this.X.ess_drv_chat(this.h, p, len, messages.length, addAssistant ? 1 : 0);
    this.X.ess_free(p);
    this.check(n, 'chat template');
    return dec.decode(this.u8(this.X.ess_drv_text(this.h), n).slice());
  }

  stopStrings() {
    const n = this.check(this.X.ess_drv_stops(this.h), 'stops');
    return dec.decode(this.u8(this.X.ess_drv_text(this.h), n).slice()).split('\0').filter(Boolean);
  }

  sampler({ temp = 0.8, topK = 40, topP = 0.95, minP = 0.05, repeat = 1.0, seed = Date.now() % 2 ** 32 } = {}) {
    this.check(this.X.ess_drv_sampler(this.h, temp, topK, topP, minP, repeat, seed), 'sampler');
  }
  accept(tokens) {
    const p = this.put(new Uint8Array(Int32Array.from(tokens).buffer));
    const rc = this.X.ess_drv_accept(this.h, p, tokens.length);
    this.X.ess_free(p);
    this.check(rc, 'accept');
  }
  sample() { return this.check(this.X.ess_drv_sample(this.h), 'sample'); }
  isEog(id) { return !!this.X.ess_drv_is_eog(this.h, id); }
  streamReset(stripSpace = false) { this.X.ess_drv_stream_reset(this.h, stripSpace ? 1 : 0); }
  piece(id) {
    const n = this.check(this.X.ess_drv_piece(this.h, id), 'detokenize');
    return n ? this.u8(this.X.ess_drv_text(this.h), n).slice() : new Uint8Array(0);
  }
  flush() { const n = this.check(this.X.ess_drv_flush(this.h), 'flush'); return this.u8(this.X.ess_drv_text(this.h), n).slice(); }
  pos() { return this.X.ess_drv_pos(this.h); }
  rewind(pos) { this.check(this.X.ess_drv_rewind(this.h, pos), 'rewind'); }
  rounds() { return this.X.ess_drv_rounds(this.h); }
  logits() { return this.f32(this.X.ess_drv_logits(this.h), this.info.nVocab).slice(); }

  // The current round's requests as plain objects (activations and row ids copied out).
  requests() {
    const n = this.X.ess_drv_n_req(this.h), R = this.REC;
    const t = Array.from(this.u32(this.X.ess_drv_table(this.h), n * R));
    const acts = new Map(), out = [];
    for (let i = 0; i < n; i++) {
      const v = t.slice(i * R, (i + 1) * R);
      const q = { idLo: v[0], idHi: v[1], key: v[1] * 2 ** 32 + v[0], kind: v[2], frag: v[3], item: v[4], r0: v[5], r1: v[6],
                  wtype: v[7], ne0: v[8], actType: v[11], nTok: v[12], outCols: v[15], layer: v[18] | 0, tensor: v[19],
                  mmMode: R > 20 ? v[20] : 0 };  // a core older than the field: plain dots
      if (q.kind === 0) {
        const k = `${v[9]}:${v[10] * v[12]}`;
        if (!acts.has(k)) acts.set(k, this.u8(v[9], v[10] * v[12]).slice());
        q.act = acts.get(k);
      } else {
        q.ids = Uint32Array.from(this.i32(v[16], v[12]), x => x - v[17]);
      }
      out.push(q);
    }
    return out;
  }

  // Gives request q its result (Float32Array of nTok * outCols). Stale ones are ignored.
  deliver(q, values) {
    const p = this.X.ess_drv_scratch(this.h, 4 * values.length);
    this.f32(p, values.length).set(values);
    this.check(this.X.ess_drv_result(this.h, q.idLo, q.idHi, p, values.length), 'result');
  }

  // Evaluates tokens to the next logits. exec(reqs, deliver) runs one round: it must call
  // deliver(q, values) for every request (in any order) before its promise resolves.
  // onRound(reqs) reports progress (reqs[0].layer says where the pass is).
  async eval(tokens, exec, onRound = null) {
    const p = this.put(new Uint8Array(Int32Array.from(tokens).buffer));
    const rc = this.X.ess_drv_eval(this.h, p, tokens.length);
    this.X.ess_free(p);
    this.check(rc, 'eval');
    for (;;) {
      const r = this.check(this.X.ess_drv_step(this.h), 'step');
      if (r === DONE) return;
      if (r === WAIT) throw new Error('driver waits: the executor left results missing');
      const reqs = this.requests();
      if (onRound) onRound(reqs);
      await exec(reqs, (q, v) => this.deliver(q, v));
    }
  }
}

// A COMPUTE or ROWS frame for request q on the fragment whose 32-byte id is fragId.
export function requestFrame(wireId, q, fragId, deadlineMs = 30000) {
  return q.kind === 0
    ? wire.encodeCompute(wireId, { frag: fragId, item: q.item, r0: q.r0, r1: q.r1, actType: q.actType, nTok: q.nTok,
                                   nIn: q.ne0, deadlineMs, mmMode: q.mmMode ?? 0, act: q.act })
    : wire.encodeRows(wireId, { frag: fragId, item: q.item, ids: q.ids, nIn: q.ne0, deadlineMs });
}
