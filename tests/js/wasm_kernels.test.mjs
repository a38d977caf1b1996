// wasm_kernels.test.mjs - the core's kernels built to wasm (Makefile.emscripten-free), run
// in Node through our own WASI shim (web/js/wasi.js), against the native build on the same
// inputs (build/kernel_probe). Quantized bytes must be identical; dot products equal within
// a relative 1e-5 (SIMD128 sums in another order than the scalar reference).
//
// Needs: build/wasm/essaim.wasm and build/kernel_probe (tests/run.sh builds both).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadCore } from '../../web/js/wasi.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const buildDir = process.env.ESSAIM_BUILD ?? join(root, 'build');
const wasmPath = process.env.ESSAIM_WASM ?? join(root, 'build', 'wasm', 'essaim.wasm');
const probe = join(buildDir, 'kernel_probe');

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

const core = await loadCore(readFileSync(wasmPath));
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
