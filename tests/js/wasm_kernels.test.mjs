// wasm_kernels.test.mjs - the core's kernels built to wasm (Makefile.emscripten-free), run
// in Node through our own WASI shim (web/js/wasi.js), against the native build on the same
// inputs (build/kernel_probe). Quantized bytes must be identical; dot products equal within
// a relative 1e-5 (SIMD128 sums in another order than the scalar reference).
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
