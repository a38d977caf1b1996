// relay.js - one WebSocket connection to essaim-relay, through the handshake of
// docs/protocol.md 6.1 (HELLO, CHALLENGE/AUTH with an Ed25519 key, WELCOME), then frames
// both ways. Used by the node Worker and the chat Worker. No retry logic here: callers
// decide (the node reconnects with backoff; the chat fails the answer with a message).

import * as wire from './wire.js';

export function relayUrl(base = self.location.href) {
  const u = new URL('/ws', base);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

const unhex = wire.unhex;

// Opens the connection. roles: ['node'] / ['asker'] / ['viewer']; ident: the result of
// store.identity() (needed for 'node'). onFrame(h) gets every frame after WELCOME
// (h = wire.decodeHeader(...)); onClose(reason) once. Resolves with {ws, welcome, send, close}.
export function connect(url, { roles, ident = null, onFrame, onClose }) {
  return new Promise((resolve, reject) => {
    let ws;
    try { ws = new WebSocket(url, 'essaim.v1'); } catch (e) { reject(e); return; }
    ws.binaryType = 'arraybuffer';
    let ready = false, closed = false;
    const send = f => { if (ws.readyState === 1) ws.send(f); };
    const close = (reason = 'leaving') => {
      if (ws.readyState === 1) send(wire.encodeJson(wire.T.BYE, { reason }));
      ws.close(1000);
    };
    const timer = setTimeout(() => { if (!ready) { ws.close(); reject(new Error('relay did not answer the handshake within 10 s')); } }, 10000);
    ws.onopen = () => {
      const hello = { proto: 1, roles, client: 'essaim-web/0.1', platform: 'browser' };
      if (ident) hello.pubkey = ident.pubHex;
      send(wire.encodeJson(wire.T.HELLO, hello));
    };
    ws.onmessage = async ev => {
      if (typeof ev.data === 'string') return;
      let h;
      try { h = wire.decodeHeader(ev.data); } catch (e) { send(wire.encodeError(0, wire.E.BAD_FRAME, e.message)); return; }
      if (ready) { onFrame?.(h); return; }
      if (h.type === wire.T.CHALLENGE && ident) {
        const { nonce } = wire.decodeJson(h.payload);
        const ctx = new TextEncoder().encode('essaim-auth-v1');
        const msg = new Uint8Array(ctx.length + 1 + 64);
        msg.set(ctx, 0); msg.set(unhex(nonce), ctx.length + 1); msg.set(unhex(ident.pubHex), ctx.length + 33);
        const sig = new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, ident.privateKey, msg));
        send(wire.encodeJson(wire.T.AUTH, { sig: wire.hex(sig) }));
      } else if (h.type === wire.T.WELCOME) {
        ready = true;
        clearTimeout(timer);
        resolve({ ws, welcome: wire.decodeJson(h.payload), send, close });
      } else if (h.type === wire.T.ERROR) {
        const e = wire.decodeError(h.payload);
        clearTimeout(timer);
        reject(new Error(`relay refused: ${e.name} ${e.text}`));
      }
    };
    ws.onerror = () => { if (!ready) { clearTimeout(timer); reject(new Error(`cannot reach the relay at ${url}`)); } };
    ws.onclose = ev => {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      if (!ready) reject(new Error(`relay closed the connection (${ev.code})`));
      else onClose?.(ev.reason || `closed (${ev.code})`);
    };
  });
}
