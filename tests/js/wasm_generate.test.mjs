// wasm_generate.test.mjs - a whole greedy generation in the wasm build, the way the browser
// runs it: one wasm instance is the asker (wasm/abi_driver.c: header fragments -> model,
// plan, tokenizer; rounds of requests; sampling; streamed text), another is the node
// (wasm/abi_node.c: fragment files, COMPUTE/ROWS frames -> RESULT frames), and JS carries
// every request between them as real wire frames (web/js/wire.js).
//
// Fragments come from the native `essaim fragment` when build/essaim exists (and the wasm
// fragmenter must then write the very same files), else from the wasm fragmenter.
// Expected tokens: llama.cpp's greedy continuation of "Once upon a time" (facts in
// /work/shared/models/README.md) and, when build/essaim exists, `essaim run --temp 0`.
// Model-specific checks skip when the test models are absent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NodeCore, DriverCore, fragmentGguf, requestFrame } from '../../web/js/core.js';
import * as wire from '../../web/js/wire.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const wasmPath = process.env.ESSAIM_WASM ?? join(root, 'build', 'wasm', 'essaim.wasm');
const models = process.env.ESSAIM_TEST_MODELS ?? join(root, '..', 'shared', 'models');
const essaim = [process.env.ESSAIM_BUILD && join(process.env.ESSAIM_BUILD, 'essaim'), join(root, 'build', 'essaim')]
  .find(p => p && existsSync(p));
const wasmBytes = readFileSync(wasmPath);
const sha = b => createHash('sha256').update(b).digest('hex');
const tmp = mkdtempSync(join(tmpdir(), 'essaim-wasm-gen-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));

const PROMPT = 'Once upon a time';
const PROMPT_IDS = [1, 403, 407, 261, 378];
const LILY = ', there was a little girl named Lily. She loved to play outside in the park. One day, she saw';
const CASES = [
  // file, max fragment size, llama.cpp's 32 greedy tokens as text, ids (when known)
  ['stories260K.gguf', 64 << 10, LILY,
   [432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394]],
  ['stories260K-Q4_0.gguf', 16 << 10, ', there was a little girl named Lily. She loved to play outside in the sun. One day, she went'],
  ['stories260K-pad256-Q4_K_M.gguf', 64 << 10, ', there was a little girl named Lily. She loved to play with her toys and run around in the par'],
  ['stories260K-moe4x2-Q8_0.gguf', 32 << 10, LILY],
];

// The fragments of a model: [{id, file}] and the manifest's source size.
function fragments(gguf, path, maxSize) {
  const made = fragmentGguf(wasmCore, gguf, maxSize);
  const files = made.files.map(f => ({ id: sha(f), file: f }));
  if (!essaim) return { files, native: false };
  const dir = join(tmp, `${sha(gguf).slice(0, 8)}-${maxSize}`);
  execFileSync(essaim, ['fragment', path, '-o', dir, '--max-size', String(maxSize)], { stdio: 'pipe' });
  const man = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  assert.equal(man.model_id, made.modelId, 'model id (sha256 of the GGUF)');
  assert.equal(man.fragments.length, files.length, 'fragment count: wasm fragmenter vs essaim fragment');
  for (const f of man.fragments) assert.equal(files[f.index].id, f.id, `fragment ${f.index}: wasm bytes equal essaim fragment's`);
  const nat = man.fragments.map(f => ({ id: f.id, file: new Uint8Array(readFileSync(join(dir, `${f.id}.esf`))) }));
  return { files: nat, native: true };
}

let wasmCore;

// Runs the asker against one node holding every non-header fragment; all traffic as frames.
async function generate(gguf, files, nPredict, { maxBatch = 0, onResult = null } = {}) {
  const node = await NodeCore.create(wasmBytes);
  const drv = await DriverCore.create(wasmBytes);
  const byIndex = [];
  for (const { id, file } of files) {
    const info = node.open(id, file);
    byIndex[info.index] = { id, file, info };
    if (info.cls === 'header') drv.addHeader(file);
  }
  const info = drv.open(gguf.length, { nCtx: 256, maxBatch });
  assert.equal(info.nFrags, files.length, 'the plan rebuilt from the header has every fragment');
  for (const i of drv.neededFrags()) drv.addFrag(byIndex[i].file);
  drv.start();

  let wireId = 1, frames = 0;
  const exec = async (reqs, deliver) => {
    for (const q of reqs) {
      const out = node.handle(requestFrame(wireId, q, wire.unhex(byIndex[q.frag].id)));
      const h = wire.decodeHeader(out);
      if (h.type === wire.T.ERROR) throw new Error(`node: ${wire.decodeError(h.payload).text}`);
      assert.equal(h.id, wireId++, 'RESULT answers the request id');
      const r = wire.decodeResult(h.payload);
      assert.equal(r.nTok, q.nTok);
      assert.equal(r.nCols, q.outCols);
      if (onResult) onResult(q, r.values);
      deliver(q, r.values);
      frames++;
    }
  };
  const prompt = drv.encode(PROMPT, true, true);
  drv.sampler({ temp: 0 });
  drv.accept(prompt);
  drv.streamReset(false);
  let layersSeen = new Set();
  await drv.eval(prompt, exec, reqs => layersSeen.add(reqs[0].layer));
  const ids = [], bytes = [];
  for (let i = 0; i < nPredict; i++) {
    const id = drv.sample();
    if (drv.isEog(id)) break;
    ids.push(id);
    bytes.push(...drv.piece(id));
    if (i + 1 < nPredict) await drv.eval([id], exec);
  }
  bytes.push(...drv.flush());
  return { prompt, ids, text: new TextDecoder().decode(Uint8Array.from(bytes)), frames, layersSeen, info, drv, node, files: byIndex };
}

test('wasm core loads and exports both ABIs', async () => {
  wasmCore = await NodeCore.create(wasmBytes);
  for (const f of ['ess_node_frame', 'ess_node_compute', 'ess_node_rows', 'ess_drv_open', 'ess_drv_step', 'ess_drv_sample', 'ess_fragger_new'])
    assert.equal(typeof wasmCore.X[f], 'function', f);
  assert.ok(wasmBytes.length < 300 * 1024, `essaim.wasm is ${wasmBytes.length} bytes, over 300 KB`);
});

test('node ABI refuses bad requests with ERROR frames', async t => {
  const path = join(models, 'stories260K.gguf');
  if (!existsSync(path)) return t.skip('no test models');
  const gguf = new Uint8Array(readFileSync(path));
  const { files } = fragmentGguf(wasmCore, gguf, 64 << 10);
  const node = await NodeCore.create(wasmBytes);
  const f = files.find(x => x.length > 20000 && x !== files[0]);
  const id = sha(f);
  const info = node.open(id, f);
  const it = info.items[0];
  const frag = wire.unhex(id);
  const act = new Uint8Array(4 * it.ne0);
  const ask = o => wire.decodeHeader(node.handle(wire.encodeCompute(7, { frag, item: 0, r0: 0, r1: 1, actType: 0, nTok: 1, nIn: it.ne0, act, ...o })));
  assert.equal(ask({}).type, wire.T.RESULT, 'a good request gets a RESULT');
  for (const [bad, why] of [[{ r1: it.row1 - it.row0 + 1 }, 'rows past the item'], [{ item: 99 }, 'no such item'],
                            [{ actType: 8 }, 'wrong activation type'], [{ nIn: it.ne0 + 32, act: new Uint8Array(4 * (it.ne0 + 32)) }, 'n_in != ne0']]) {
    const h = ask(bad);
    assert.equal(h.type, wire.T.ERROR, why);
    const e = wire.decodeError(h.payload);
    assert.ok(e.code === wire.E.BAD_SIZE || e.code === wire.E.BAD_FRAME, `${why}: ${e.name} ${e.text}`);
  }
  const other = wire.decodeHeader(node.handle(wire.encodeCompute(8, { frag: new Uint8Array(32), item: 0, r0: 0, r1: 1, actType: 0, nTok: 1, nIn: it.ne0, act })));
  assert.equal(wire.decodeError(other.payload).code, wire.E.NOT_HOLDING);
  const broken = f.slice(0, 100);
  assert.throws(() => node.open('x', broken), /fragment|byte|trunc/i, 'a truncated fragment file is refused');
});

for (const [file, maxSize, expectText, expectIds] of CASES) {
  test(`${file}: greedy generation in wasm equals llama.cpp${essaim ? ' and essaim run' : ''}`, async t => {
    const path = join(models, file);
    if (!existsSync(path)) return t.skip(`${path} not found`);
    const gguf = new Uint8Array(readFileSync(path));
    const { files, native } = fragments(gguf, path, maxSize);
    const g = await generate(gguf, files, 32);
    assert.deepEqual(g.prompt, PROMPT_IDS, 'prompt tokens');
    if (expectIds) assert.deepEqual(g.ids, expectIds, 'token ids');
    assert.equal(g.text, expectText, 'text');
    assert.ok(g.frames > 0);
    assert.deepEqual([...g.layersSeen].sort((a, b) => a - b), [-1, ...Array.from({ length: g.info.nLayer + 1 }, (_, i) => i)],
                    'rounds report every layer, the embedding (-1) and the head');
    if (native) {
      const out = execFileSync(essaim, ['run', path, '-p', PROMPT, '-n', '32', '--temp', '0', '--ids', '-t', '1'],
                               { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
      assert.deepEqual(g.ids, out.split(/\s+/).map(Number), 'token ids equal `essaim run --temp 0`');
    }
  });
}

// Random-weight models (essaim synth, in a temp dir) diverge from any other arithmetic within
// a few tokens, so they hold the wasm node to the native one's bits (Q4_0 and Q4_K tensors
// are repacked ones: the COMPUTEs carry mm_mode 1 and 2 arithmetic):
//   - 32 greedy tokens equal `essaim run --temp 0`;
//   - every COMPUTE the wasm node answers on the way (prompt batch and each decode step) is
//     bit for bit what the native kernels give on the same bytes (build/kernel_probe raw);
//   - the logits of every prefix evaluated as one batch equal `essaim run --dump-logits`.
//     That last check also holds the asker's own float code (wasm/abi_driver.c, ops.c) to
//     the native engine's: RoPE there takes glibc's sinf/cosf arithmetic (shared/libm.c;
//     wasi-libc's own differ in the last bit for some angles, which showed on Q4_K_M).
// The last case adds Llama 3.1-style rope frequency factors (rope_freqs.weight).
const SYNTH = [['Q4_K_M'], ['Q4_0'], ['Q8_0'], ['Q4_K_M', ['--rope-freqs']]];
const probe = essaim && join(dirname(essaim), 'kernel_probe');
const f32hex = a => Buffer.from(Float32Array.from(a).buffer).toString('hex');
for (const [type, extra = []] of SYNTH) {
  const label = [type, ...extra].join(' ');
  const path = join(tmp, `synth-${label.replace(/\W+/g, '_')}.gguf`);
  let run = null;  // the generation, shared by the two tests of this model
  const setup = async () => {
    if (run) return run;
    execFileSync(essaim, ['synth', '--preset', 'tinyllama-1.1b', '--type', type, '--layers', '2', '--embd', '256', '--heads', '4',
                          '--kv-heads', '2', '--ff', '512', '--vocab-size', '512', '--seed', '2', ...extra, '-o', path], { stdio: 'pipe' });
    const gguf = new Uint8Array(readFileSync(path));
    const files = fragmentGguf(wasmCore, gguf, 96 << 10).files.map(f => ({ id: sha(f), file: f }));
    const computes = [];
    const g = await generate(gguf, files, 32, { maxBatch: 64, onResult: (q, values) => q.kind === 0 && computes.push({ q, values }) });
    run = { g, computes };
    return run;
  };
  test(`synthetic ${label} model: wasm tokens and every COMPUTE answer equal the native node's bits`,
       { skip: !(essaim && existsSync(probe)) && 'no build/essaim or build/kernel_probe' }, async () => {
    const { g, computes } = await setup();
    assert.equal(g.ids.length, 32, 'no end of text before 32 tokens');
    const out = execFileSync(essaim, ['run', path, '-p', PROMPT, '-n', '32', '--temp', '0', '--ids', '-t', '1'],
                             { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
    assert.deepEqual(g.ids, out.split(/\s+/).map(Number), 'token ids equal `essaim run --temp 0`');
    if (type !== 'Q8_0') assert.ok(computes.some(c => c.q.mmMode), 'the asker sent COMPUTEs with a repacked mm_mode');
    const wf = join(tmp, 'w.bin'), af = join(tmp, 'a.bin');
    for (const { q, values } of computes) {
      const f = g.files[q.frag], it = f.info.items[q.item], X = g.node.X, wrow = X.ess_row_size(q.wtype, q.ne0);
      const at = f.info.headerBytes + it.offset + q.r0 * wrow;
      writeFileSync(wf, f.file.subarray(at, at + (q.r1 - q.r0) * wrow));
      writeFileSync(af, q.act);
      const nat = execFileSync(probe, ['raw', q.wtype, q.ne0, q.r1 - q.r0, q.nTok, q.mmMode, wf, af].map(String),
                               { maxBuffer: 64 << 20 }).toString().trim();
      assert.equal(f32hex(values), nat, `${it.name} rows [${q.r0}, ${q.r1}), ${q.nTok} tokens, mm_mode ${q.mmMode}`);
    }
  });
  test(`synthetic ${label} model: logits of every prefix equal the native engine's bits`,
       { skip: !essaim && 'no build/essaim' }, async () => {
    const { g } = await setup();
    const seq = [...g.prompt, ...g.ids], dump = join(tmp, `dump-${label.replace(/\W+/g, '_')}.json`);
    let wireId = 1;
    for (let k = 0; k < g.ids.length; k++) {
      const prefix = seq.slice(0, g.prompt.length + k);
      execFileSync(essaim, ['run', path, '--tokens', prefix.join(','), '--dump-logits', dump, '-t', '1', '-n', '1'], { stdio: 'pipe' });
      const nat = JSON.parse(readFileSync(dump, 'utf8')).logits.at(-1);
      g.drv.rewind(0);
      await g.drv.eval(prefix, async (reqs, deliver) => {
        for (const q of reqs) {
          const h = wire.decodeHeader(g.node.handle(requestFrame(wireId++, q, wire.unhex(g.files[q.frag].id))));
          if (h.type === wire.T.ERROR) throw new Error(`node: ${wire.decodeError(h.payload).text}`);
          deliver(q, wire.decodeResult(h.payload).values);
        }
      });
      const got = g.drv.logits();
      if (f32hex(got) !== f32hex(nat)) {
        const i = got.findIndex((v, j) => !Object.is(v, Math.fround(nat[j])));
        assert.fail(`prefix of ${prefix.length} tokens: logit ${i} is ${got[i]}, native ${nat[i]}`);
      }
    }
  });
}

test('prompt longer than the batch runs as several batches, same tokens', async t => {
  const path = join(models, 'stories260K.gguf');
  if (!existsSync(path)) return t.skip('no test models');
  const gguf = new Uint8Array(readFileSync(path));
  const files = fragmentGguf(wasmCore, gguf, 0).files.map(f => ({ id: sha(f), file: f })); // whole-tensor plan
  const g = await generate(gguf, files, 8, { maxBatch: 2 });
  assert.deepEqual(g.ids, CASES[0][3].slice(0, 8));
});

test('chat template and stop strings come from the model', async t => {
  const path = join(models, 'stories260K.gguf');
  if (!existsSync(path)) return t.skip('no test models');
  const gguf = new Uint8Array(readFileSync(path));
  const drv = await DriverCore.create(wasmBytes);
  const files = fragmentGguf(wasmCore, gguf, 64 << 10).files;
  drv.addHeader(files[0]);
  const info = drv.open(gguf.length);
  assert.equal(info.arch, 'llama');
  assert.equal(info.nLayer, 5);
  assert.equal(info.nVocab, 512);
  const text = drv.chat([{ role: 'user', content: 'Hi' }]);
  assert.ok(text.includes('Hi'), text);
  assert.ok(drv.stopStrings().length >= 1);
  assert.throws(() => drv.start(), /fragment|local/i, 'starting without the small-tensor fragments fails with a message');
});
