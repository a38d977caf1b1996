// chat.js - the chat page: the conversation (kept in IndexedDB across reloads), the
// answer streamed token by token with a per-token progress bar (layer k of N), stop,
// temperature and length. The model runs in driver-worker.js; this page only shows text.
import { boot, $, el } from './app.js';
import * as store from './store.js';

boot();
const worker = new Worker(new URL('./driver-worker.js', import.meta.url), { type: 'module' });
let conv = null, ready = false, busy = false, answerEl = null, answerText = '';

const LABEL = { loading: 'Loading the model…', connecting: 'Connecting…', ready: 'Ready', thinking: 'Thinking…',
                offline: 'Relay unreachable', error: 'Unavailable' };

function setStatus(state, detail = '') {
  $('#status').dataset.state = state;
  $('#status-text').textContent = (LABEL[state] ?? state) + (detail && (state === 'loading' || state === 'connecting') ? ` (${detail})` : '');
}

function bubble(role, text, meta = '') {
  $('#welcome').hidden = true;
  const b = el('div', { class: `msg ${role}` });
  const t = el('span', { class: 'text', text });
  b.append(t);
  if (meta) b.append(el('span', { class: 'meta', text: meta }));
  $('#thread').append(b);
  return b;
}

function render() {
  for (const m of [...document.querySelectorAll('.msg')]) m.remove();
  $('#welcome').hidden = conv.messages.length > 0;
  for (const m of conv.messages) bubble(m.role, m.content);
}

function setBusy(b) {
  busy = b;
  $('#send').hidden = b;
  $('#stop').hidden = !b;
  $('#send').disabled = !ready;
  $('#tokbar').hidden = !b;
}

async function newConversation() {
  conv = { id: `c${Date.now()}`, title: 'New chat', messages: [] };
  await store.setSetting('conversation', conv.id);
  render();
}

$('#form').onsubmit = async ev => {
  ev.preventDefault();
  const text = $('#prompt').value.trim();
  if (!text || busy || !ready) return;
  $('#prompt').value = '';
  $('#prompt').style.height = '';
  $('#error').textContent = '';
  conv.messages.push({ role: 'user', content: text });
  if (conv.title === 'New chat') conv.title = text.slice(0, 60);
  await store.putConversation(conv);
  bubble('user', text);
  answerText = '';
  document.getElementById('answer')?.removeAttribute('id');
  answerEl = bubble('assistant', '');
  answerEl.querySelector('.text').id = 'answer';
  setBusy(true);
  worker.postMessage({ cmd: 'ask', messages: conv.messages, temperature: +$('#temperature').value, maxTokens: +$('#max-tokens').value });
};

$('#stop').onclick = () => worker.postMessage({ cmd: 'stop' });
$('#new-chat').onclick = () => { if (!busy) newConversation(); };
$('#temperature').oninput = () => { $('#temperature-out').textContent = String(+$('#temperature').value); store.setSetting('temperature', +$('#temperature').value); };
$('#max-tokens').onchange = () => store.setSetting('max_tokens', +$('#max-tokens').value);
$('#prompt').oninput = () => { const t = $('#prompt'); t.style.height = 'auto'; t.style.height = `${Math.min(t.scrollHeight, 160)}px`; };
$('#prompt').onkeydown = ev => { if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); $('#form').requestSubmit(); } };

async function finish(meta) {
  if (!answerEl) return;
  if (meta) answerEl.append(el('span', { class: 'meta', text: meta }));
  if (answerText) { conv.messages.push({ role: 'assistant', content: answerText }); await store.putConversation(conv); }
  answerEl = null;
  setBusy(false);
}

worker.onmessage = async ev => {
  const m = ev.data;
  switch (m.type) {
    case 'state': setStatus(m.state, m.detail); break;
    case 'ready':
      ready = true;
      $('#model-name').textContent = m.model.name;
      $('#send').disabled = busy;
      break;
    case 'progress': {
      const pct = Math.round(100 * m.layer / m.nLayer);
      $('#tokbar-text').textContent = `token ${m.token + 1} · layer ${m.layer} of ${m.nLayer}`;
      $('#tokbar-bar').style.width = `${pct}%`;
      break;
    }
    case 'text':
      answerText += m.text;
      if (answerEl) { answerEl.querySelector('.text').textContent = answerText; answerEl.scrollIntoView({ block: 'end' }); }
      break;
    case 'done':
      // The token ids, for tests that replay them through the local engine.
      if (answerEl) Object.assign(answerEl.querySelector('.text').dataset, { tokens: m.ids.join(','), prompt: m.prompt.join(','), reason: m.reason });
      await finish(`${m.tokens} tokens · ${m.seconds.toFixed(1)} s · ${m.rounds} rounds${m.reason === 'stopped' ? ' · stopped' : ''}`);
      break;
    case 'error':
      $('#error').textContent = m.message;
      await finish('failed');
      break;
  }
};
worker.onerror = ev => { $('#error').textContent = `worker: ${ev.message}`; setStatus('error'); };

(async () => {
  setBusy(false);
  const t = await store.getSetting('temperature');
  if (t !== undefined) { $('#temperature').value = t; $('#temperature-out').textContent = String(t); }
  const n = await store.getSetting('max_tokens');
  if (n) $('#max-tokens').value = n;
  const id = await store.getSetting('conversation');
  conv = id && await store.getConversation(id);
  if (!conv) await newConversation(); else render();
  worker.postMessage({ cmd: 'init' });
})();
