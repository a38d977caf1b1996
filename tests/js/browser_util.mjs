// browser_util.mjs - what the browser tests share: playwright-core (from tests/web), Debian's
// chromium with the flags of TOOLCHAIN.md, a tiny static server for web/ (with the wasm
// core at /essaim.wasm), and where the relay and node binaries are.
import { createRequire } from 'node:module';
import { createServer } from 'node:http';
import { readFileSync, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, extname, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const webDir = join(root, 'web');
export const wasmPath = process.env.ESSAIM_WASM ?? join(root, 'build', 'wasm', 'essaim.wasm');
export const artifacts = join(root, 'tests', 'artifacts');
export const models = process.env.ESSAIM_TEST_MODELS ?? join(root, '..', 'shared', 'models');
const buildDir = process.env.ESSAIM_BUILD ?? join(root, 'build');
export const relayBin = [process.env.ESSAIM_RELAY_BIN, join(buildDir, 'essaim-relay'), join(root, 'build', 'essaim-relay')].find(p => p && existsSync(p));
export const essaimBin = [process.env.ESSAIM_BIN, join(buildDir, 'essaim'), join(root, 'build', 'essaim')].find(p => p && existsSync(p));

let pw = null;
export function playwright() {
  if (pw) return pw;
  try {
    pw = createRequire(join(root, 'tests', 'web', 'package.json'))('playwright-core');
  } catch {
    pw = null;
  }
  return pw;
}
export const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const canBrowse = () => !!playwright() && existsSync(chromiumPath);

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
              '--disable-background-networking', '--disable-component-update', '--disable-sync'];

// One chromium process whose contexts (browser.newContext()) are isolated like separate
// browsers: each has its own IndexedDB, so each contributor page is a node of its own.
export async function launchBrowser() {
  const browser = await playwright().chromium.launch({ executablePath: chromiumPath, args: ARGS, timeout: 30000 });
  return { browser, close: () => browser.close().catch(() => {}) };
}

export async function launch(opts = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'essaim-chromium-'));
  const ctx = await playwright().chromium.launchPersistentContext(dir, {
    executablePath: chromiumPath,
    args: ARGS,
    ...opts,
  });
  const close = async () => { await ctx.close(); rmSync(dir, { recursive: true, force: true }); };
  return { ctx, close, dir };
}

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
                '.json': 'application/json', '.webmanifest': 'application/manifest+json', '.svg': 'image/svg+xml',
                '.png': 'image/png', '.wasm': 'application/wasm' };

// Serves web/ on 127.0.0.1 (random port); extra: {path: () => {status, type, body}} routes.
export function serveWeb(extra = {}) {
  const srv = createServer((rq, rs) => {
    const path = decodeURIComponent(new URL(rq.url, 'http://x').pathname);
    const route = extra[path];
    if (route) {
      const r = route();
      rs.writeHead(r.status ?? 200, { 'Content-Type': r.type ?? 'application/json', 'Cache-Control': 'no-store' });
      rs.end(r.body);
      return;
    }
    let file = path === '/essaim.wasm' ? wasmPath : join(webDir, normalize(path === '/' ? '/index.html' : path));
    if (!file.startsWith(webDir) && file !== wasmPath) { rs.writeHead(403); rs.end(); return; }
    if (!existsSync(file) || statSync(file).isDirectory()) { rs.writeHead(404); rs.end('not found'); return; }
    rs.writeHead(200, { 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream', 'Cache-Control': 'no-cache' });
    rs.end(readFileSync(file));
  });
  return new Promise(resolve => srv.listen(0, '127.0.0.1', () => {
    const url = `http://127.0.0.1:${srv.address().port}`;
    resolve({ url, close: () => new Promise(r => { srv.closeAllConnections?.(); srv.close(r); }) });
  }));
}
