// contribute.js - the contribute page: one click to join, what the node Worker reports
// (connection, fragments and what they hold, downloads, storage, requests, uptime), the
// use/contribute/both choice, and leaving (which deletes the fragments).
import { boot, bytes, duration, $, el } from './app.js';
import * as store from './store.js';

boot();
const worker = new Worker(new URL('./node-worker.js', import.meta.url), { type: 'module' });
let last = null, models = {}, showAll = false;
const FOLD = 6;   // fragments listed before "Show all": a node usually holds one or two

const LABEL = { idle: 'Not joined', connecting: 'Connecting…', online: 'Connected to the swarm',
                reconnecting: 'Reconnecting…', offline: 'Relay unreachable' };
const HELP = { use: 'Chat with the swarm without lending anything.',
               contribute: 'Lend storage and compute; no chat from this device.',
               both: 'Contribute a fragment and chat with the swarm.' };

function modeNow() { return document.querySelector('input[name=mode]:checked').value; }

function render(s) {
  last = s;
  const joined = s.state !== 'idle';
  $('#status').dataset.state = s.state;
  $('#status-text').textContent = LABEL[s.state] ?? s.state;
  $('#node-id').textContent = s.nodeId ? `Node ${s.nodeId} · ${s.relay.replace(/^wss?:\/\//, '').replace(/\/ws$/, '')}` : '\u00a0';
  $('#join').hidden = joined || modeNow() === 'use';
  $('#leave').hidden = !joined && !s.frags.length;
  $('#chat-link').hidden = modeNow() === 'contribute';
  $('#served').textContent = s.served.toLocaleString();
  $('#storage').textContent = bytes(s.used);
  $('#nfrags').textContent = s.frags.length;
  $('#error').textContent = s.error ?? '';
  const dl = s.download;
  $('#download').hidden = !dl;
  if (dl) {
    const pct = dl.total ? Math.floor(100 * dl.got / dl.total) : 0;
    $('#download-what').textContent = `Downloading fragment ${dl.id.slice(0, 10)}… (${bytes(dl.got)} of ${bytes(dl.total)})`;
    $('#download-pct').textContent = `${pct}%`;
    $('#download-bar').setAttribute('aria-valuenow', pct);
    $('#download-bar span').style.width = `${pct}%`;
  }
  const ul = $('#fragments');
  ul.replaceChildren();
  if (!s.frags.length) ul.append(el('li', { class: 'empty', text: joined ? 'Waiting for the relay to assign a fragment…' : 'Nothing yet. Join and the relay will assign you a fragment (about 10 MB).' }));
  const shown = showAll ? s.frags : s.frags.slice(0, FOLD);
  for (const f of shown) {
    const name = models[f.modelId] ?? `model ${f.modelId.slice(0, 8)}`;
    const it = f.items;
    let what;
    const label = x => `${x.tensor}${x.layer !== null ? `, layer ${x.layer}` : ''}${f.cls === 'expert' ? `, expert ${x.expert}` : ''}`;
    if (f.cls === 'header') what = 'Model header (metadata and tokenizer)';
    else if (it.length === 1) what = label(it[0]);
    else {
      // a fragment may end one matrix, start the next and carry small tensors (norms)
      const big = it.filter(x => x.row1 - x.row0 > 1), small = it.length - big.length;
      const parts = big.slice(0, 2).map(x => `${label(x)} (rows ${x.row0}–${x.row1 - 1})`);
      if (big.length > 2) parts.push(`${big.length - 2} more`);
      if (small) parts.push(`${small} small tensor${small > 1 ? 's' : ''} (norms)`);
      what = parts.join(' + ');
    }
    const rows = it.length === 1 && f.cls !== 'header' ? ` · rows ${it[0].row0}–${it[0].row1 - 1}` : '';
    ul.append(el('li', {}, el('div', { class: 'what', text: what }, el('span', { class: 'tag', text: f.cls })),
                 el('div', { class: 'muted small', text: `${name} · fragment #${f.index} · ${bytes(f.size)}${rows}` })));
  }
  if (s.frags.length > shown.length) {
    const more = el('button', { class: 'btn more', type: 'button', text: `Show all ${s.frags.length} fragments` });
    more.onclick = () => { showAll = true; render(last); };
    ul.append(el('li', { class: 'more-row' }, more));
  }
}

setInterval(() => { if (last?.joinedAt && last.state !== 'idle') $('#uptime').textContent = duration((Date.now() - last.joinedAt) / 1000); }, 1000);

worker.onmessage = ev => { if (ev.data.type === 'status') render(ev.data); };
worker.onerror = ev => { $('#error').textContent = `worker: ${ev.message}`; };

$('#join').onclick = async () => {
  await store.setSetting('joined', true);
  worker.postMessage({ cmd: 'join', budget: +$('#budget').value });
};
$('#leave').onclick = async () => {
  if (!confirm('Leave the swarm and delete the fragments stored in this browser?')) return;
  await store.setSetting('joined', false);
  worker.postMessage({ cmd: 'leave' });
  $('#uptime').textContent = '—';
};
for (const r of document.querySelectorAll('input[name=mode]'))
  r.onchange = async () => { $('#mode-help').textContent = HELP[modeNow()]; await store.setSetting('mode', modeNow()); if (last) render(last); };
$('#budget').onchange = () => store.setSetting('budget', +$('#budget').value);

(async () => {
  const mode = await store.getSetting('mode');
  if (mode) { document.querySelector(`input[name=mode][value=${mode}]`).checked = true; $('#mode-help').textContent = HELP[mode]; }
  const budget = await store.getSetting('budget');
  if (budget) $('#budget').value = String(budget);
  worker.postMessage({ cmd: 'start' });
  // A returning contributor rejoins without a click, with the fragments already stored.
  if (await store.getSetting('joined') && modeNow() !== 'use') worker.postMessage({ cmd: 'join', budget: +$('#budget').value });
  try {
    const s = await (await fetch('/api/stats')).json();
    for (const m of s.models ?? []) models[m.id] = m.name;
    if (last) render(last);
  } catch { /* relay not reachable: names stay short ids */ }
})();
