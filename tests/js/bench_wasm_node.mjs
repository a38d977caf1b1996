// bench_wasm_node.mjs - figures for the browser node (run by hand; not part of the suite):
//   1. compute: COMPUTE over a whole Q4_K fragment of about 10 MB (a tinyllama-shaped synth
//      model, 2 layers, Q4_K_M, cut at 10M) in wasm (each module: essaim.wasm, and
//      essaim-relaxed.wasm when built), in Node and in headless Chromium,
//      against the native node's ess_matmul_ex on one thread (build/bench_matmul), on the same
//      activation bytes, each tensor in the mode the swarm's driver asks (mm_mode: llama.cpp's
//      repacked arithmetic for Q4_K); both the bare kernel call (ess_node_compute_ex) and the
//      whole frame path a browser node runs per request (NodeCore.handle: frame in, RESULT out);
//   2. sizes: essaim.wasm, and the bytes of each page (html + css + js it loads);
//   3. join: time from clicking Join on the contribute page to the first COMPUTE answered
//      (a relay serving the synth model's fragments, one browser node, an asker that sends
//      a COMPUTE for a fragment as soon as the node holds one).
//
//   node tests/js/bench_wasm_node.mjs [--tokens N] [--reps R] [--wasm PATH]... [--no-browser] [--no-join]
//   --wasm (repeatable): the modules to measure, default ESSAIM_WASM and, when it exists,
//   build/wasm/essaim-relaxed.wasm. Relaxed SIMD needs a V8 flag in Node 20: the script
//   runs itself again under --experimental-wasm-relaxed-simd when it lacks it.
//   ESSAIM_BUILD (default build/), ESSAIM_WASM (default build/wasm/essaim.wasm),
//   BENCH_DIR (default /tmp/essaim-bench: the synth model and fragments, kept between runs)
// Prints a table and a last JSON line with every figure.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join, basename } from 'node:path';
import { performance } from 'node:perf_hooks';
import { NodeCore, hasRelaxedSimd } from '../../web/js/core.js';
import * as wire from '../../web/js/wire.js';
import { canBrowse, launchBrowser, serveWeb, webDir, wasmPath, root } from './browser_util.mjs';
import { Peer, T, freePort } from './relay_util.mjs';

if (!hasRelaxedSimd() && !process.env.ESSAIM_BENCH_CHILD) {
  const r = spawnSync(process.execPath, ['--experimental-wasm-relaxed-simd', ...process.argv.slice(1)],
                      { stdio: 'inherit', env: { ...process.env, ESSAIM_BENCH_CHILD: '1' } });
  process.exit(r.status ?? 1);
}

const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
const nTok = +arg('--tokens', 1), reps = +arg('--reps', 30);
const relaxedPath = join(root, 'build', 'wasm', 'essaim-relaxed.wasm');
const modules = process.argv.flatMap((a, i) => (a === '--wasm' ? [process.argv[i + 1]] : []));
if (!modules.length) modules.push(wasmPath, ...(existsSync(relaxedPath) ? [relaxedPath] : []));
const label = m => basename(m);
const build = process.env.ESSAIM_BUILD ?? join(root, 'build');
const essaim = join(build, 'essaim'), benchBin = join(build, 'bench_matmul'), relayBin = join(build, 'essaim-relay');
const dir = process.env.BENCH_DIR ?? '/tmp/essaim-bench';

// ---- the model and the fragment ----
mkdirSync(dir, { recursive: true });
const gguf = join(dir, 'tinyllama-2l-Q4_K_M.gguf'), frags = join(dir, 'frags');
if (!existsSync(gguf))
  execFileSync(essaim, ['synth', '--preset', 'tinyllama-1.1b', '--type', 'Q4_K_M', '--layers', '2', '-o', gguf], { stdio: 'inherit' });
if (!existsSync(join(frags, 'manifest.json')))
  execFileSync(essaim, ['fragment', gguf, '-o', frags, '--max-size', '10M'], { stdio: 'inherit' });
const manifest = JSON.parse(readFileSync(join(frags, 'manifest.json'), 'utf8'));
// The largest fragment made of Q4_K rows only (token_embd rows at this size: 8000 x 2048).
const pick = manifest.fragments.filter(f => f.class !== 'header' && f.items?.length && f.items.every(it => it.type === 'Q4_K'))
  .sort((a, b) => b.size - a.size)[0];
const fragPath = join(frags, `${pick.id}.esf`);
const file = new Uint8Array(readFileSync(fragPath));
const actDir = join(dir, `act-${pick.id.slice(0, 12)}-${nTok}`);
mkdirSync(actDir, { recursive: true });

// ---- native ----
const nat = JSON.parse(execFileSync(benchBin, [fragPath, String(nTok), String(reps), actDir], { encoding: 'utf8' }));
const acts = Object.fromEntries(nat.items.map(it => [it.item, new Uint8Array(readFileSync(join(actDir, `act-${it.item}.bin`)))]));

// ---- wasm (the same function in Node and in the page; it must not close over anything) ----
async function benchWasm({ NodeCore, wire, wasm, file, id, acts, items, nTok, reps }) {
  const node = await NodeCore.create(wasm);
  node.open(id, file);
  const X = node.X, f = node.frags.get(id).f;
  const jobs = items.map(it => {
    const act = acts[it.item];
    return { ...it, act, at: X.ess_vec_dot_type(it.type), pa: node.put(act), po: X.ess_alloc(4 * it.rows * nTok) };
  });
  const frames = jobs.map((j, i) => wire.encodeCompute(i + 1, { frag: wire.unhex(id), item: j.item, r0: 0, r1: j.rows, actType: j.at,
                                                                 nTok, nIn: j.ne0, mmMode: j.mmMode, act: j.act }));
  const time = pass => {
    pass();
    const ms = [];
    for (let r = 0; r < reps; r++) { const t0 = performance.now(); pass(); ms.push(performance.now() - t0); }
    ms.sort((a, b) => a - b);
    return { best: ms[0], median: ms[ms.length >> 1] };
  };
  const kernel = time(() => {
    for (const j of jobs) {
      const rc = X.ess_node_compute_ex(node.n, f, j.item, 0, j.rows, j.at, nTok, j.ne0, j.pa, j.act.length, j.po, j.mmMode);
      if (rc) throw new Error(`ess_node_compute_ex: ${node.cstr(X.ess_node_err(node.n))}`);
    }
  });
  const sums = jobs.map(j => { let s = 0; for (const v of node.f32(j.po, j.rows * nTok)) s += v; return s; });
  let results = [];
  const framed = time(() => { results = frames.map(fr => node.handle(fr)); });
  const bad = results.find(r => r[3] !== wire.T.RESULT);
  if (bad) throw new Error(`frame path answered type ${bad[3]}`);
  return { kernel, framed, sums, isa: X.ess_cpu_isa() };
}

// each item in the mode the swarm's driver asks of it (bench_matmul says which)
const items = nat.items.map(({ item, type, mm_mode, ne0, rows }) => ({ item, type, mmMode: mm_mode, ne0, rows }));
const job = { wire, file, id: pick.id, acts, items, nTok, reps };
const check = sums => sums.every((s, i) => Math.abs(s - nat.items[i].sum) <= 1e-3 * Math.max(1, Math.abs(nat.items[i].sum)));
const inNode = {};
for (const m of modules) {
  if (m.includes('relaxed') && !hasRelaxedSimd()) { console.log(`skipped ${m}: this Node runs no relaxed SIMD`); continue; }
  inNode[m] = await benchWasm({ ...job, NodeCore, wasm: readFileSync(m) });
  if (!check(inNode[m].sums)) throw new Error(`${m}: wasm sums ${inNode[m].sums} differ from native ${nat.items.map(i => i.sum)}`);
}

const inBrowser = {};
let join_ms = null, join_frag = null;
const browse = canBrowse() && !process.argv.includes('--no-browser');
if (browse) {
  const routes = { '/bench/frag': () => ({ type: 'application/octet-stream', body: Buffer.from(file) }) };
  modules.forEach((m, i) => { routes[`/bench/core-${i}.wasm`] = () => ({ type: 'application/wasm', body: readFileSync(m) }); });
  for (const [k, v] of Object.entries(acts)) routes[`/bench/act-${k}`] = () => ({ type: 'application/octet-stream', body: Buffer.from(v) });
  const srv = await serveWeb(routes);
  const br = await launchBrowser();
  try {
    const page = await (await br.browser.newContext()).newPage();
    await page.goto(`${srv.url}/chat.html`);
    for (const [i, m] of modules.entries()) {
      const r = await page.evaluate(async ([src, id, items, nTok, reps, url, relaxed]) => {
        const { NodeCore, hasRelaxedSimd } = await import('/js/core.js');
        if (relaxed && !hasRelaxedSimd()) return null;
        const wire = await import('/js/wire.js');
        const get = async u => new Uint8Array(await (await fetch(u)).arrayBuffer());
        const acts = {};
        for (const it of items) acts[it.item] = await get(`/bench/act-${it.item}`);
        const fn = (0, eval)(`(${src})`);
        return fn({ NodeCore, wire, wasm: await get(url), file: await get('/bench/frag'), id, acts, items, nTok, reps });
      }, [benchWasm.toString(), pick.id, items, nTok, reps, `/bench/core-${i}.wasm`, m.includes('relaxed')]);
      if (!r) { console.log(`skipped ${m} in Chromium: no relaxed SIMD there`); continue; }
      if (!check(r.sums)) throw new Error(`${m}: browser sums differ from native`);
      inBrowser[m] = r;
    }
  } finally {
    await br.close();
    await srv.close();
  }
}

// ---- page sizes: the html and every css/js file it loads (static imports followed) ----
function pageBytes(html) {
  const seen = new Set();
  const visit = rel => {
    if (seen.has(rel)) return;
    const p = join(webDir, rel);
    if (!existsSync(p)) return;
    seen.add(rel);
    const text = readFileSync(p, 'utf8');
    for (const m of text.matchAll(/(?:href|src)="\/((?:css|js)\/[^"]+)"/g)) visit(m[1]);
    for (const m of text.matchAll(/(?:from\s+|import\()\s*'\.\/([^']+)'/g)) visit(`js/${m[1]}`);
    for (const m of text.matchAll(/new URL\('\.\/([^']+)'/g)) visit(`js/${m[1]}`);
  };
  visit(html);
  return { files: seen.size, bytes: [...seen].reduce((a, r) => a + statSync(join(webDir, r)).size, 0) };
}
const pages = Object.fromEntries(['index.html', 'chat.html', 'dashboard.html'].map(h => [h, pageBytes(h)]));

// ---- join: click -> first COMPUTE answered ----
if (browse && !process.argv.includes('--no-join') && existsSync(relayBin)) {
  const store = join(dir, `relay-store-${process.pid}`);
  execFileSync(relayBin, ['--store', store, '--add-model', frags], { stdio: 'ignore' });
  const port = await freePort();
  const relay = spawn(relayBin, ['--listen', `127.0.0.1:${port}`, '--store', store, '--web', webDir, '--replicas', '1'], { stdio: 'ignore' });
  const br = await launchBrowser();
  try {
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 50; i++) { try { await fetch(`${base}/api/stats`); break; } catch { await new Promise(r => setTimeout(r, 100)); } }
    const page = await (await br.browser.newContext()).newPage();
    await page.goto(`${base}/`);
    await page.selectOption('#budget', String(16 << 20));
    const asker = new Peer(`ws://127.0.0.1:${port}/ws`);
    await asker.join(['asker']);
    const t0 = performance.now();
    await page.click('#join');
    // The first fragment the page holds (its Worker posts the list as soon as it is stored).
    let fid = null;
    for (const t1 = Date.now(); !fid; await new Promise(r => setTimeout(r, 20))) {
      if (Date.now() - t1 > 120000) throw new Error('the page got no fragment in 2 minutes');
      fid = await page.evaluate(async () => {
        const { listFragments } = await import('/js/store.js');
        return (await listFragments()).find(m => m.role === 'node' && m.cls !== 'header')?.id ?? null;
      });
    }
    const core = await NodeCore.create(readFileSync(wasmPath));
    const it = core.open(fid, readFileSync(join(frags, `${fid}.esf`))).items[0];
    const ne0 = it.ne0, at = core.X.ess_vec_dot_type(it.type);
    const xp = core.X.ess_alloc(4 * ne0), qp = core.X.ess_alloc(core.X.ess_row_size(at, ne0)), kk = core.X.ess_kernels_new(2);
    core.f32(xp, ne0).fill(0.5);
    core.X.ess_quantize(kk, at, xp, qp, ne0);
    const act = core.u8(qp, core.X.ess_row_size(at, ne0)).slice();
    for (let tries = 0; ; tries++) {
      asker.send(Buffer.from(wire.encodeCompute(tries + 1, { frag: wire.unhex(fid), item: 0, r0: 0, r1: 1, actType: at, nTok: 1, nIn: ne0, act })));
      const r = await asker.next(f => f.id === BigInt(tries + 1), 10000);
      if (r.type === T.RESULT) break;
      if (tries > 200) throw new Error('no RESULT');
      await new Promise(res => setTimeout(res, 20));   // the relay learns of the fragment from HOLDINGS
    }
    join_ms = performance.now() - t0;
    join_frag = { id: fid, bytes: statSync(join(frags, `${fid}.esf`)).size, tensor: it.name };
    asker.close();
  } finally {
    await br.close();
    relay.kill('SIGTERM');
    execFileSync('rm', ['-rf', store]);
  }
}

// ---- report ----
const gb = ms => (nat.payload_bytes / (ms * 1e6)).toFixed(2);
const row = (what, r) => console.log(`${what.padEnd(44)} ${r.best.toFixed(3).padStart(9)} ms  ${r.median.toFixed(3).padStart(9)} ms  ${gb(r.best).padStart(6)} GB/s  ${(nat.ms_best / r.best).toFixed(2)}x native`);
console.log(`fragment ${pick.id.slice(0, 12)} (#${pick.index}): ${nat.items.map(i => `${i.name} ${i.rows}x${i.ne0}`).join(', ')}, ` +
            `${(nat.payload_bytes / 1e6).toFixed(2)} MB Q4_K, ${nTok} token(s), ${reps} passes`);
console.log(`${'what'.padEnd(44)} ${'best'.padStart(12)} ${'median'.padStart(12)}`);
row('native ess_matmul_ex, 1 thread (AVX2)', { best: nat.ms_best, median: nat.ms_median });
for (const [m, r] of Object.entries(inNode)) {
  row(`${label(m)} in Node, kernel`, r.kernel);
  row(`${label(m)} in Node, whole frame`, r.framed);
}
for (const [m, r] of Object.entries(inBrowser)) {
  row(`${label(m)} in Chromium, kernel`, r.kernel);
  row(`${label(m)} in Chromium, whole frame`, r.framed);
}
for (const m of modules) console.log(`${label(m)} ${statSync(m).size} bytes`);
for (const [p, s] of Object.entries(pages)) console.log(`${p}: ${s.bytes} bytes in ${s.files} files (html+css+js)`);
if (join_ms !== null) console.log(`Join click -> first COMPUTE answered: ${(join_ms / 1000).toFixed(2)} s (first fragment: ${join_frag.tensor}, ${(join_frag.bytes / 1e6).toFixed(2)} MB, downloaded, sha256-checked, stored)`);
console.log(JSON.stringify({ fragment: pick.id, payload_bytes: nat.payload_bytes, n_tok: nTok, native: nat, wasm_node: inNode, wasm_chromium: inBrowser,
                             wasm_bytes: Object.fromEntries(modules.map(m => [label(m), statSync(m).size])), pages, join_ms, join_frag }));
