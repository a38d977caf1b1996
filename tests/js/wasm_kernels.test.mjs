// wasm_kernels.test.mjs - the core's kernels built to wasm (Makefile.emscripten-free), run
// in Node through our own WASI shim (web/js/wasi.js), against the native build on the same
// inputs (build/kernel_probe). Quantized bytes must be identical; single dots equal the
// scalar reference within a relative 1e-5 (the reference sums in another order), and what
// a node answers (ess_matmul_ex) has exactly the native bits.
//
// The same checks then run on build/wasm/essaim-relaxed.wasm (relaxed SIMD) when it was
// built: in a child `node --experimental-wasm-relaxed-simd` running this file again with
// ESSAIM_WASM pointing at it (Node 20 validates relaxed SIMD only behind that V8 flag, which
// NODE_OPTIONS does not carry).
//
// Needs: build/wasm/essaim.wasm and build/kernel_probe (tests/run.sh builds both).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync, rmSync, existsSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadCore } from '../../web/js/wasi.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const buildDir = process.env.ESSAIM_BUILD ?? join(root, 'build');
const wasmPath = process.env.ESSAIM_WASM ?? join(root, 'build', 'wasm', 'essaim.wasm');
const probe = join(buildDir, 'kernel_probe');
const relaxedPath = join(root, 'build', 'wasm', 'essaim-relaxed.wasm');
const isChild = process.env.ESSAIM_WASM_RELAXED_CHILD === '1';

// Seeded floats (mulberry32): the same bytes go to both sides through files, so the
// generator needs no twin in C.
function randomFloats(n, seed, scale) {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    out[i] = (u * 2 - 1) * scale;
  }
  return out;
}

const TYPES = [
  ['F32', 0, [1, 7, 64, 1000]], ['F16', 1, [1, 7, 64, 1000]], ['BF16', 30, [1, 7, 64, 1000]],
  ['Q4_0', 2, [32, 96, 4128]], ['Q4_1', 3, [32, 96, 4128]], ['Q5_0', 6, [32, 96, 4128]],
  ['Q5_1', 7, [32, 96, 4128]], ['Q8_0', 8, [32, 96, 4128]],
  ['Q2_K', 10, [256, 768, 4352]], ['Q3_K', 11, [256, 768, 4352]], ['Q4_K', 12, [256, 768, 4352]],
  ['Q5_K', 13, [256, 768, 4352]], ['Q6_K', 14, [256, 768, 4352]],
];

const wasmBytes = readFileSync(wasmPath);
const core = await loadCore(wasmBytes);
const X = core.exports;
const kSimd = X.ess_kernels_new(2), kRef = X.ess_kernels_new(0);
const sha = (ptr, n) => createHash('sha256').update(new Uint8Array(core.memory.buffer, ptr, n)).digest('hex');
const near = (a, b) => Math.abs(a - b) <= 1e-5 * Math.max(1, Math.abs(b));

test('the wasm build reports SIMD128', () => {
  assert.equal(X.ess_cpu_isa(), 2);
});

const dir = mkdtempSync(join(tmpdir(), 'essaim-wasm-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

for (const [name, type, sizes] of TYPES) {
  test(`${name}: wasm quantize and dot equal native`, () => {
    const at = X.ess_vec_dot_type(type);
    assert.ok(at >= 0, `${name} has a dot type`);
    for (const [i, n] of sizes.entries()) {
      const seed = 1000 * type + i;
      const w = randomFloats(n, seed, 1.0), a = randomFloats(n, seed + 7, 3.0);
      const wf = join(dir, 'w.f32'), af = join(dir, 'a.f32');
      writeFileSync(wf, Buffer.from(w.buffer));
      writeFileSync(af, Buffer.from(a.buffer));
      const nat = JSON.parse(execFileSync(probe, [String(type), String(n), wf, af]).toString());

      const wb = X.ess_row_size(type, n), ab = X.ess_row_size(at, n);
      const pw = X.ess_alloc(4 * n), pa = X.ess_alloc(4 * n), qw = X.ess_alloc(wb), qa = X.ess_alloc(ab);
      new Float32Array(core.memory.buffer, pw, n).set(w);
      new Float32Array(core.memory.buffer, pa, n).set(a);
      assert.equal(X.ess_quantize(kRef, type, pw, qw, n), 0);
      assert.equal(X.ess_quantize(kSimd, at, pa, qa, n), 0);
      assert.equal(sha(qw, wb), nat.w_sha, `${name} n=${n}: weight bytes`);
      assert.equal(sha(qa, ab), nat.a_sha, `${name} n=${n}: activation bytes (SIMD128 quantizer)`);
      const ref = X.ess_vec_dot(kRef, type, n, qw, qa), simd = X.ess_vec_dot(kSimd, type, n, qw, qa);
      assert.ok(near(ref, nat.ref), `${name} n=${n}: wasm ref ${ref} vs native ref ${nat.ref}`);
      assert.ok(near(simd, nat.ref), `${name} n=${n}: wasm simd128 ${simd} vs native ref ${nat.ref}`);
      assert.ok(near(nat.best, nat.ref), `${name} n=${n}: native best ${nat.best} vs ref ${nat.ref}`);
      for (const p of [pw, pa, qw, qa]) X.ess_free(p);
    }
  });
}

// What a node answers to a COMPUTE, bit for bit: ess_matmul_ex on the wasm kernels must give
// the floats the native build gives on this (AVX2) machine, for every weight type, every
// mm_mode (repacked Q4_0/Q4_K/Q2_K arithmetic; other types ignore it), and batches of 1..9
// tokens and a wide one (37: gemm groups, tiles and leftovers). 12 rows: one 8-row tile and
// four rows outside it. Activations are quantized as the asker does for the mode.
const MM_TOKS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 37], MM_ROWS = 12;
const REPACKED = new Set([2, 10, 12]);  // Q4_0, Q2_K, Q4_K
const MM_NE0 = { F32: [1008, 1001], F16: [1008, 1000], BF16: [1008, 1001] };
const u8hex = (ptr, n) => Buffer.from(new Uint8Array(core.memory.buffer, ptr, n)).toString('hex');
// ess_matmul_ex on `rows` x ne0 random weights of `type` in `mode`, for each of `toks`
// token counts (weights seeded by type, ne0 and seed): the wasm bits must equal native's.
function matmulCheck(name, type, ne0, mode, rows, toks, seed = 0) {
  const at = X.ess_vec_dot_type(type);
  const w = randomFloats(rows * ne0, 31 * type + ne0 + seed, 1.0), x = randomFloats(37 * ne0, 77 * type + ne0 + mode, 3.0);
  const wf = join(dir, 'mw.f32'), xf = join(dir, 'mx.f32');
  writeFileSync(wf, Buffer.from(w.buffer));
  writeFileSync(xf, Buffer.from(x.buffer));
  const lines = execFileSync(probe, ['matmul', String(type), String(ne0), String(rows), String(mode), wf, xf, ...toks.map(String)],
                             { maxBuffer: 64 << 20 }).toString().trim().split('\n').map(l => JSON.parse(l));
  const wrow = X.ess_row_size(type, ne0), arow = X.ess_row_size(at, ne0);
  const pw = X.ess_alloc(4 * w.length), px = X.ess_alloc(4 * x.length), qw = X.ess_alloc(wrow * rows);
  const qa = X.ess_alloc(arow * 37), out = X.ess_alloc(4 * rows * 37);
  new Float32Array(core.memory.buffer, pw, w.length).set(w);
  new Float32Array(core.memory.buffer, px, x.length).set(x);
  for (let r = 0; r < rows; r++) assert.equal(X.ess_quantize(kRef, type, pw + 4 * r * ne0, qw + r * wrow, ne0), 0);
  for (const nat of lines) {
    const what = `${name} ne0=${ne0} rows=${rows} mode=${mode} n_tok=${nat.n_tok}`;
    assert.equal(sha(qw, wrow * rows), nat.w_sha, `${what}: weight bytes`);
    assert.equal(X.ess_matmul_quantize(kSimd, type, mode, px, nat.n_tok, ne0, qa), 0);
    assert.equal(sha(qa, arow * nat.n_tok), nat.a_sha, `${what}: activation bytes`);
    assert.equal(X.ess_matmul_ex(kSimd, type, mode, qw, ne0, rows, qa, nat.n_tok, out), 0);
    const got = u8hex(out, 4 * rows * nat.n_tok);
    if (got !== nat.out) {
      const g = new Float32Array(Buffer.from(got, 'hex').buffer), e = new Float32Array(Buffer.from(nat.out, 'hex').buffer);
      const bad = g.findIndex((v, i) => !Object.is(v, e[i]));
      assert.fail(`${what}: output ${bad} (token ${Math.floor(bad / rows)}, row ${bad % rows}) is ${g[bad]}, native ${e[bad]}` +
                  ` (${g.filter((v, i) => !Object.is(v, e[i])).length} of ${g.length} differ)`);
    }
  }
  for (const p of [pw, px, qw, qa, out]) X.ess_free(p);
}
for (const [name, type, sizes] of TYPES) {
  test(`${name}: wasm ess_matmul_ex gives the native bits (every mm_mode, 1..9 and 37 tokens)`, () => {
    for (const ne0 of MM_NE0[name] ?? [sizes[1], sizes[2]])
      for (const mode of REPACKED.has(type) ? [0, 1, 2] : [0, 1]) matmulCheck(name, type, ne0, mode, MM_ROWS, MM_TOKS);
  });
}
// The repacked types' gemv tokens run several rows per pass on wasm (Q4_K: four): every row
// count from 1 to 9 (whole groups and leftovers), 1..9 tokens (gemm groups, then gemv ones;
// mode 2: all gemv).
for (const [name, type, sizes] of TYPES.filter(t => REPACKED.has(t[1]))) {
  test(`${name}: wasm ess_matmul_ex gives the native bits on 1..9 rows (repacked modes, 1..9 tokens)`, () => {
    for (let rows = 1; rows <= 9; rows++)
      for (const mode of [1, 2]) matmulCheck(name, type, sizes[1], mode, rows, MM_TOKS.slice(0, 9), 1000 * rows);
  });
}

// The FMA emulation behind those bits (quant_impl.h), and wasi-libc's fmaf (what the scalar
// mirrors in ops.c and quant_repack.c call), against x86's correctly rounded fmaf: random
// triples over wide exponents, and crafted ones whose f64 sum lands on an f32 midpoint
// (where rounding twice goes wrong), near overflow and in the subnormal range.
function fmaTriples() {
  const r = randomFloats(3 * 4000, 99, 1.0), t = [];
  for (let i = 0; i < 4000; i++) {
    const e = k => Math.pow(2, Math.round(r[(3 * i + k + 1) % r.length] * 40));
    t.push(r[3 * i] * e(0), r[3 * i + 1] * e(1), r[3 * i + 2] * e(2));
  }
  const f = v => Math.fround(v), ulp = 2 ** -23;
  for (let k = 0; k < 64; k++) {
    const c = f(1 + (2 * k + 1) * ulp), s = k % 2 ? -1 : 1;  // odd last bit: ties go up, the truth below
    t.push(f(1 + ulp), f((1 - ulp) * 2 ** -24), c, f(1 + ulp), f((1 - ulp) * 2 ** -24), f(1 + 2 * k * ulp));
    t.push(s * f(1 + ulp), f((1 + ulp) * 2 ** -24), s * c, f(1 - ulp / 2), f(2 ** -24), c);
    t.push(f(2 ** -70 * (1 + k * ulp)), f(2 ** -70), f(2 ** -140 * (k + 1)), f(3e38), f(1 + k * ulp), f(-3e38));
  }
  return Float32Array.from(t);
}
// Native fmaf (glibc: correctly rounded) of the triples; which = 0: ess_fmaf must agree on
// all of them; which = 1: wasi-libc's fmaf must not (it is why ess_fmaf exists).
const fmaCheck = which => () => {
  const t = fmaTriples(), tf = join(dir, 'fma.f32');
  writeFileSync(tf, Buffer.from(t.buffer));
  const nat = new Float32Array(Buffer.from(execFileSync(probe, ['fma', tf]).toString().trim(), 'hex').buffer);
  const bad = [];
  for (let i = 0; i < nat.length; i++) {
    const got = X.ess_fma_f32(which, t[3 * i], t[3 * i + 1], t[3 * i + 2]);
    if (!Object.is(Math.fround(got), nat[i])) bad.push(`fma(${t[3 * i]}, ${t[3 * i + 1]}, ${t[3 * i + 2]}) = ${got}, x86 ${nat[i]}`);
  }
  if (which) assert.ok(bad.length > 0, 'wasi-libc fmaf now rounds once: ess_fmaf could call it');
  else assert.deepEqual(bad.slice(0, 5), [], `ess_fmaf: ${bad.length} of ${nat.length} differ`);
};
test('ess_fmaf (the kernels\' and ops.c\'s FMA in wasm) rounds as x86 fmaf', fmaCheck(0));
// Debian's wasi-libc (2022-05) computes fmaf as one f64 sum rounded to f32: wrong on the
// midpoint cases the triples include, which is why the wasm build calls ess_fmaf instead.
test('wasi-libc fmaf rounds twice on f32 midpoints (ess_fmaf replaces it)', fmaCheck(1));

// RoPE's sinf/cosf in a wasm asker (shared/libm.c) against the native build's libm (glibc):
// every angle RoPE makes for positions 0..4095 at two bases and 128 dimensions, and random
// floats over every magnitude (large arguments take the 2/pi table). wasi-libc's own
// differ on about 1.3% of them, which is why libm.c exists.
test('RoPE sinf/cosf give the native libm\'s bits', () => {
  const xs = [];
  for (const base of [10000, 1000000]) {
    const scale = Math.fround(Math.pow(base, -2 / 128));
    for (let pos = 0; pos < 4096; pos += 3) {
      let th = Math.fround(pos);
      for (let i = 0; i < 64; i++, th = Math.fround(th * scale)) xs.push(th);
    }
  }
  const u = new Uint32Array(1), f = new Float32Array(u.buffer);
  let seed = 12345;
  for (let i = 0; i < 100000; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    u[0] = seed & 0xff7fffff;  // no NaN or Inf
    xs.push(f[0]);
  }
  const x = Float32Array.from(xs), xf = join(dir, 'angles.f32');
  writeFileSync(xf, Buffer.from(x.buffer));
  const nat = new Float32Array(Buffer.from(execFileSync(probe, ['sincos', xf], { maxBuffer: 64 << 20 }).toString().trim(), 'hex').buffer);
  for (const [fn, label] of [[0, 'libm.c'], [2, 'wasi-libc']]) {
    let bad = 0, first = '';
    for (let i = 0; i < x.length; i++) {
      const s = X.ess_libm_f32(fn, x[i]), c = X.ess_libm_f32(fn + 1, x[i]);
      if (!Object.is(s, nat[2 * i]) || !Object.is(c, nat[2 * i + 1])) {
        if (!bad++) first = `x = ${x[i]}: sin ${s} / ${nat[2 * i]}, cos ${c} / ${nat[2 * i + 1]}`;
      }
    }
    if (fn === 0) assert.equal(bad, 0, `${label}: ${bad} of ${x.length} differ, first ${first}`);
    else assert.ok(bad > 0, 'wasi-libc now agrees with glibc: libm.c could go');
  }
});

// Every bit pattern of the weights, not only what the quantizers write: random weight bytes
// (scales set to 1 so that no block is Inf/NaN) and activations saturating +-127, SIMD128
// against the wasm scalar reference. The relaxed paths rewrite the weights (Q8_0 splits off
// the sign bit, so its -128 is exercised here and nowhere else).
const RAW = [  // name, type, block bytes, block elements, offsets of fp16 scales in a block
  ['Q4_0', 2, 18, 32, [0]], ['Q8_0', 8, 34, 32, [0]], ['Q4_K', 12, 144, 256, [0, 2]], ['Q6_K', 14, 210, 256, [208]],
];
test('dots on random weight bytes equal the wasm reference', () => {
  for (const [name, type, bsize, bn, scales] of RAW) {
    const nb = 17, n = nb * bn, at = X.ess_vec_dot_type(type), ab = X.ess_row_size(at, n);
    const bytes = Uint8Array.from(randomFloats(nb * bsize, 4242 + type, 1.0), u => Math.floor((u + 1) * 128) & 255);
    for (let b = 0; b < nb; b++) for (const o of scales) { bytes[b * bsize + o] = 0x00; bytes[b * bsize + o + 1] = 0x3c; }
    bytes.fill(0x80, 0, bsize);  // block 0: -128 for Q8_0, nibbles 0 and 8
    bytes.fill(0xff, bsize, 2 * bsize);
    for (let b = 0; b < 2; b++) for (const o of scales) { bytes[b * bsize + o] = 0x00; bytes[b * bsize + o + 1] = 0x3c; }
    const a = randomFloats(n, 77 + type, 3.0);
    for (let i = 0; i < n; i += 5) a[i] = i % 2 ? 50 : -50;  // saturating quants in many blocks
    const qw = X.ess_alloc(bytes.length), pa = X.ess_alloc(4 * n), qa = X.ess_alloc(ab);
    new Uint8Array(core.memory.buffer, qw, bytes.length).set(bytes);
    new Float32Array(core.memory.buffer, pa, n).set(a);
    assert.equal(X.ess_quantize(kSimd, at, pa, qa, n), 0);
    const ref = X.ess_vec_dot(kRef, type, n, qw, qa), simd = X.ess_vec_dot(kSimd, type, n, qw, qa);
    assert.ok(Number.isFinite(ref) && near(simd, ref), `${name}: simd ${simd} vs ref ${ref}`);
    for (const p of [qw, pa, qa]) X.ess_free(p);
  }
});

// The probe of web/js/core.js: a module using i16x8.relaxed_dot_i8x16_i7x16_s.
const RELAXED_PROBE = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 1, 4, 1, 0x60, 0, 0, 3, 2, 1, 0,
                                      0x0a, 0x0e, 1, 0x0c, 1, 2, 0x7b, 0x20, 0, 0x20, 1, 0xfd, 0x92, 2, 0x1a, 0x0b]);

if (isChild) {
  test('this engine runs relaxed SIMD', () => assert.ok(WebAssembly.validate(RELAXED_PROBE)));
} else if (!process.env.ESSAIM_WASM && existsSync(relaxedPath)) {
  test('essaim-relaxed.wasm needs relaxed SIMD (an engine without it rejects it)', () => {
    if (WebAssembly.validate(RELAXED_PROBE)) return;  // this Node runs relaxed SIMD by default
    assert.equal(WebAssembly.validate(readFileSync(relaxedPath)), false);
  });
  test('essaim-relaxed.wasm: the same checks under --experimental-wasm-relaxed-simd', () => {
    const env = { ...process.env, ESSAIM_WASM: relaxedPath, ESSAIM_WASM_RELAXED_CHILD: '1' };
    delete env.NODE_TEST_CONTEXT;  // a plain run with the TAP reporter, not a node --test worker
    const r = spawnSync(process.execPath, ['--experimental-wasm-relaxed-simd', fileURLToPath(import.meta.url)],
                        { env, encoding: 'utf8', maxBuffer: 16 << 20 });
    const failed = (r.stdout.match(/^not ok .*$/gm) ?? []).join('\n');
    assert.equal(r.status, 0, `child failed (${r.status}):\n${failed}\n${r.stderr}\n${r.stdout.slice(-4000)}`);
    assert.match(r.stdout, /^# fail 0$/m);
    assert.match(r.stdout, /^ok \d+ - this engine runs relaxed SIMD$/m);
  });
}
