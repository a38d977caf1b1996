// sw.js - the service worker: keeps the app shell (pages, scripts, styles, icons, the wasm
// core) in a cache so the PWA installs and opens offline. Pages and code are fetched
// network-first (a deploy shows up at once) and fall back to the cache; the relay's live
// data (/api, /ws, /fragments) is never cached here: fragments live in IndexedDB.

const CACHE = 'essaim-shell-v1';
const SHELL = [
  '/', '/index.html', '/chat.html', '/dashboard.html', '/manifest.webmanifest', '/css/app.css',
  '/js/app.js', '/js/contribute.js', '/js/chat.js', '/js/dashboard.js', '/js/store.js', '/js/wire.js',
  '/js/wasi.js', '/js/core.js', '/js/relay.js', '/js/node-worker.js', '/js/driver-worker.js',
  '/icons/icon.svg', '/icons/icon-192.png', '/icons/icon-512.png',
];
const OPTIONAL = ['/essaim.wasm'];

self.addEventListener('install', ev => {
  ev.waitUntil((async () => {
    const c = await caches.open(CACHE);
    await c.addAll(SHELL);
    for (const u of OPTIONAL) { try { await c.add(u); } catch { /* not deployed here */ } }
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', ev => {
  ev.waitUntil((async () => {
    for (const k of await caches.keys()) if (k !== CACHE) await caches.delete(k);
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', ev => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== 'GET' || url.origin !== location.origin) return;
  if (/^\/(api|ws|fragments|metrics)(\/|$)/.test(url.pathname)) return;
  ev.respondWith((async () => {
    const c = await caches.open(CACHE);
    try {
      const r = await fetch(ev.request);
      if (r.ok && r.type === 'basic') c.put(ev.request, r.clone());
      return r;
    } catch (e) {
      const hit = await c.match(ev.request, { ignoreSearch: true }) ??
                  (ev.request.mode === 'navigate' ? await c.match('/index.html') : undefined);
      if (hit) return hit;
      throw e;
    }
  })());
});
