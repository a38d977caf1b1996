// wire.js - the frame codec of docs/protocol.md (shared/wire.h) in JS, for the browser's
// node and asker and for Node tests. No I/O, no state.
//
// One frame = one binary WebSocket message, little-endian:
//   0 u16 magic "ES" | 2 u8 version | 3 u8 type | 4 u16 flags | 6 u16 reserved
//   8 u64 id | 16 u32 payload length | 20 payload
// Control messages carry a UTF-8 JSON object (flag JSON); COMPUTE, ROWS, RESULT and ERROR
// are binary. Browsers never negotiate zstd, so a ZSTD frame is refused here.

export const VERSION = 1;
export const HEADER = 20;
export const F_ZSTD = 1, F_JSON = 2;

export const T = Object.freeze({
  HELLO: 1, CHALLENGE: 2, AUTH: 3, WELCOME: 4, HEARTBEAT: 5, HOLDINGS: 6, ASSIGN: 7,
  RELEASE: 8, POSSESS: 9, PROOF: 10, COMPUTE: 11, ROWS: 12, RESULT: 13, ERROR: 14,
  SIGNAL: 15, STATS: 16, BYE: 17,
});
export const TYPE_NAME = Object.fromEntries(Object.entries(T).map(([k, v]) => [v, k]));

export const E = Object.freeze({
  BAD_FRAME: 1, UNSUPPORTED_VERSION: 2, UNEXPECTED: 3, UNAUTHORIZED: 4, UNKNOWN_FRAGMENT: 5,
  NOT_HOLDING: 6, BAD_SIZE: 7, RATE_LIMITED: 8, DEADLINE: 9, NO_REPLICA: 10, OVERLOADED: 11,
  BAD_PROOF: 12, UNKNOWN_PEER: 13, INTERNAL: 14, SHUTDOWN: 15,
});
export const ERROR_NAME = Object.fromEntries(Object.entries(E).map(([k, v]) => [v, k]));

export const MAX_BINARY = 64 << 20, MAX_JSON = 1 << 20, MAX_NTOK = 4096, MAX_MM_MODE = 2;
export const COMPUTE_FIXED = 64, ROWS_FIXED = 48, RESULT_FIXED = 8, ERROR_FIXED = 2;
const JSON_TYPES = new Set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 16, 17]);

export class WireError extends Error {}

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

function frame(type, flags, id, len) {
  const buf = new Uint8Array(HEADER + len);
  const dv = new DataView(buf.buffer);
  buf[0] = 0x45; buf[1] = 0x53; buf[2] = VERSION; buf[3] = type;
  dv.setUint16(4, flags, true);
  dv.setBigUint64(8, BigInt(id), true);
  dv.setUint32(16, len, true);
  return { buf, dv };
}

// Decodes one whole frame (ArrayBuffer or Uint8Array). Returns {type, flags, id (Number, BigInt above 2^53),
// payload (Uint8Array view)}; throws WireError naming the field when it is malformed.
export function decodeHeader(data) {
  const u8 = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (u8.length < HEADER) throw new WireError(`frame of ${u8.length} bytes is shorter than its 20-byte header`);
  const dv = new DataView(u8.buffer, u8.byteOffset, u8.length);
  if (u8[0] !== 0x45 || u8[1] !== 0x53) throw new WireError('bad magic at byte 0');
  if (u8[2] !== VERSION) throw new WireError(`version ${u8[2]} at byte 2, this side speaks ${VERSION}`);
  const type = u8[3], flags = dv.getUint16(4, true);
  if (!TYPE_NAME[type]) throw new WireError(`unknown type ${type} at byte 3`);
  if (flags & ~(F_ZSTD | F_JSON)) throw new WireError(`unknown flags 0x${flags.toString(16)} at byte 4`);
  if (flags & F_ZSTD) throw new WireError('zstd payload: not negotiated by this peer');
  if (dv.getUint16(6, true) !== 0) throw new WireError('reserved field at byte 6 is not 0');
  // Ids are u64: relays number their requests from 2^63, beyond a Number's exact range,
  // so large ids stay BigInt (frames built from them echo them exactly).
  const big = dv.getBigUint64(8, true);
  const id = big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  const len = dv.getUint32(16, true);
  if (len !== u8.length - HEADER) throw new WireError(`len ${len} at byte 16, ${u8.length - HEADER} payload bytes follow`);
  if (JSON_TYPES.has(type) !== !!(flags & F_JSON)) throw new WireError(`JSON flag wrong for ${TYPE_NAME[type]}`);
  return { type, name: TYPE_NAME[type], flags, id, payload: u8.subarray(HEADER), raw: u8 };
}

export function encodeJson(type, obj, id = 0) {
  const body = enc.encode(JSON.stringify(obj));
  if (body.length > MAX_JSON) throw new WireError(`${TYPE_NAME[type]} payload of ${body.length} bytes is over the cap`);
  const { buf } = frame(type, F_JSON, id, body.length);
  buf.set(body, HEADER);
  return buf;
}

export function decodeJson(payload) {
  const v = JSON.parse(dec.decode(payload));
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new WireError('JSON payload is not an object');
  return v;
}

// frag: 32-byte Uint8Array (sha256 of the fragment file); act: Uint8Array of n_tok rows.
// mmMode (payload byte 60): how the node sums, 0 plain dots, 1 llama.cpp's repacked
// gemm/gemv, 2 repacked gemv only (the driver's per-tensor ess_matmul_mode).
export function encodeCompute(id, { frag, item, r0, r1, actType, nTok, nIn, deadlineMs = 30000, mmMode = 0, act }) {
  if (!(mmMode >= 0 && mmMode <= MAX_MM_MODE)) throw new WireError(`COMPUTE mm_mode ${mmMode} is not 0..${MAX_MM_MODE}`);
  const { buf, dv } = frame(T.COMPUTE, 0, id, COMPUTE_FIXED + act.length);
  const p = HEADER;
  buf.set(frag, p);
  [item, r0, r1, actType, nTok, nIn, deadlineMs, mmMode].forEach((v, i) => dv.setUint32(p + 32 + 4 * i, v, true));
  buf.set(act, p + COMPUTE_FIXED);
  return buf;
}

export function decodeCompute(payload) {
  if (payload.length < COMPUTE_FIXED) throw new WireError(`COMPUTE payload of ${payload.length} bytes, needs ${COMPUTE_FIXED}`);
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.length);
  const u = i => dv.getUint32(32 + 4 * i, true);
  if (u(7) > MAX_MM_MODE) throw new WireError(`COMPUTE mm_mode ${u(7)} at payload byte 60 is not 0..${MAX_MM_MODE}`);
  return { frag: payload.subarray(0, 32), item: u(0), r0: u(1), r1: u(2), actType: u(3), nTok: u(4), nIn: u(5),
           deadlineMs: u(6), mmMode: u(7), act: payload.subarray(COMPUTE_FIXED) };
}

// ids: row ids counted from the item's first row.
export function encodeRows(id, { frag, item, ids, nIn, deadlineMs = 30000 }) {
  const { buf, dv } = frame(T.ROWS, 0, id, ROWS_FIXED + 4 * ids.length);
  const p = HEADER;
  buf.set(frag, p);
  [item, ids.length, nIn, deadlineMs].forEach((v, i) => dv.setUint32(p + 32 + 4 * i, v, true));
  ids.forEach((v, i) => dv.setUint32(p + ROWS_FIXED + 4 * i, v, true));
  return buf;
}

export function decodeRows(payload) {
  if (payload.length < ROWS_FIXED) throw new WireError(`ROWS payload of ${payload.length} bytes, needs ${ROWS_FIXED}`);
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.length);
  const nTok = dv.getUint32(36, true);
  if (payload.length !== ROWS_FIXED + 4 * nTok) throw new WireError(`ROWS: ${nTok} ids need ${ROWS_FIXED + 4 * nTok} bytes, got ${payload.length}`);
  const ids = new Uint32Array(nTok);
  for (let i = 0; i < nTok; i++) ids[i] = dv.getUint32(ROWS_FIXED + 4 * i, true);
  return { frag: payload.subarray(0, 32), item: dv.getUint32(32, true), nTok, nIn: dv.getUint32(40, true),
           deadlineMs: dv.getUint32(44, true), ids };
}

// vals: Float32Array of nTok * nCols values.
export function encodeResult(id, nTok, nCols, vals) {
  const { buf, dv } = frame(T.RESULT, 0, id, RESULT_FIXED + 4 * vals.length);
  dv.setUint32(HEADER, nTok, true);
  dv.setUint32(HEADER + 4, nCols, true);
  for (let i = 0; i < vals.length; i++) dv.setFloat32(HEADER + RESULT_FIXED + 4 * i, vals[i], true);
  return buf;
}

// Returns {nTok, nCols, values: Float32Array (a copy, aligned)}.
export function decodeResult(payload) {
  if (payload.length < RESULT_FIXED) throw new WireError(`RESULT payload of ${payload.length} bytes`);
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.length);
  const nTok = dv.getUint32(0, true), nCols = dv.getUint32(4, true);
  if (!nTok || !nCols || nTok > MAX_NTOK || payload.length !== RESULT_FIXED + 4 * nTok * nCols)
    throw new WireError(`RESULT ${nTok} x ${nCols} with ${payload.length - RESULT_FIXED} value bytes`);
  const values = new Float32Array(nTok * nCols);
  new Uint8Array(values.buffer).set(payload.subarray(RESULT_FIXED));  // little-endian hosts only (all browsers)
  return { nTok, nCols, values };
}

export function encodeError(id, code, text = '') {
  let body = enc.encode(text);
  if (body.length > 1024) body = enc.encode(text.slice(0, 1000));
  const { buf, dv } = frame(T.ERROR, 0, id, ERROR_FIXED + body.length);
  dv.setUint16(HEADER, code, true);
  buf.set(body, HEADER + ERROR_FIXED);
  return buf;
}

export function decodeError(payload) {
  if (payload.length < ERROR_FIXED) throw new WireError('ERROR payload shorter than its code');
  const code = payload[0] | (payload[1] << 8);
  return { code, name: ERROR_NAME[code] ?? 'INTERNAL', text: new TextDecoder().decode(payload.subarray(ERROR_FIXED)) };
}

export const hex = u8 => Array.from(u8, b => b.toString(16).padStart(2, '0')).join('');
export function unhex(s) {
  const out = new Uint8Array(s.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}
