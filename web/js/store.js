// store.js - what the browser keeps across visits, in IndexedDB (works in pages and Workers):
//   frag_data  id -> ArrayBuffer        the fragment files, checked against their sha256 id
//   frag_meta  id -> {id, size, cls, role, modelId, items, added}   listing without loading bytes
//   convs      id -> {id, title, messages:[{role, content}], updated}
//   settings   key -> value            mode, relay, identity key pair (CryptoKeys clone fine)
// A fragment enters the store only after sha256(bytes) equals its id, so what a reload
// finds is always good to serve.

const DB = 'essaim', VERSION = 1;
let dbp = null;

function open() {
  if (dbp) return dbp;
  dbp = new Promise((resolve, reject) => {
    const rq = indexedDB.open(DB, VERSION);
    rq.onupgradeneeded = () => {
      const db = rq.result;
      for (const s of ['frag_data', 'frag_meta', 'convs', 'settings'])
        if (!db.objectStoreNames.contains(s)) db.createObjectStore(s);
    };
    rq.onsuccess = () => resolve(rq.result);
    rq.onerror = () => { dbp = null; reject(rq.error); };
  });
  return dbp;
}

function tx(stores, mode, fn) {
  return open().then(db => new Promise((resolve, reject) => {
    const t = db.transaction(stores, mode);
    let out;
    Promise.resolve(fn(...stores.map(s => t.objectStore(s)))).then(v => { out = v; });
    t.oncomplete = () => resolve(out);
    t.onerror = t.onabort = () => reject(t.error ?? new Error('IndexedDB transaction aborted'));
  }));
}

const req = r => new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error); });

export async function sha256Hex(buf) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
  return Array.from(d, b => b.toString(16).padStart(2, '0')).join('');
}

// Stores a fragment file after checking its hash. meta: {size, cls, role, modelId, items}.
export async function putFragment(id, bytes, meta = {}) {
  const buf = bytes instanceof ArrayBuffer ? bytes : bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const got = await sha256Hex(buf);
  if (got !== id) throw new Error(`fragment ${id.slice(0, 12)}: sha256 is ${got.slice(0, 12)}, not its id`);
  const m = { id, size: buf.byteLength, added: Date.now(), ...meta };
  await tx(['frag_data', 'frag_meta'], 'readwrite', (d, mt) => { d.put(buf, id); mt.put(m, id); });
  return m;
}

export const getFragment = id => tx(['frag_data'], 'readonly', d => req(d.get(id)));
export const fragmentMeta = id => tx(['frag_meta'], 'readonly', m => req(m.get(id)));
export const listFragments = () => tx(['frag_meta'], 'readonly', m => req(m.getAll()));
export const updateMeta = (id, patch) => tx(['frag_meta'], 'readwrite', async m => {
  const v = await req(m.get(id));
  if (v) m.put({ ...v, ...patch }, id);
});
export const deleteFragment = id => tx(['frag_data', 'frag_meta'], 'readwrite', (d, m) => { d.delete(id); m.delete(id); });

export async function storageUsed(role = null) {
  const all = await listFragments();
  return all.filter(f => !role || f.role === role).reduce((a, f) => a + f.size, 0);
}

export const getSetting = k => tx(['settings'], 'readonly', s => req(s.get(k)));
export const setSetting = (k, v) => tx(['settings'], 'readwrite', s => { s.put(v, k); });

export const listConversations = async () =>
  (await tx(['convs'], 'readonly', c => req(c.getAll()))).sort((a, b) => b.updated - a.updated);
export const getConversation = id => tx(['convs'], 'readonly', c => req(c.get(id)));
export const putConversation = conv => tx(['convs'], 'readwrite', c => { c.put({ ...conv, updated: Date.now() }, conv.id); });
export const deleteConversation = id => tx(['convs'], 'readwrite', c => { c.delete(id); });

// The node's Ed25519 identity: made once, kept (non-extractable private key) so reputation
// and credits follow this browser. Returns {privateKey, publicKey, pubHex}.
export async function identity() {
  let id = await getSetting('identity');
  if (id) return id;
  const kp = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
  const raw = new Uint8Array(await crypto.subtle.exportKey('raw', kp.publicKey));
  id = { privateKey: kp.privateKey, publicKey: kp.publicKey, pubHex: Array.from(raw, b => b.toString(16).padStart(2, '0')).join('') };
  await setSetting('identity', id);
  return id;
}
