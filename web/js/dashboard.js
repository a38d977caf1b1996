// dashboard.js - the network page: polls /api/stats every 2 s and shows nodes online,
// models, fragments, coverage (fragments with at least one live replica), the histogram of
// replicas per fragment, requests per second (from the completed-requests counter),
// failovers (re-sends to another replica) and the node list.
import { boot, bytes, duration, $, el } from './app.js';

boot();
const PERIOD = 2000;
let prev = null;
const rates = [];

const pct = x => `${(100 * x).toFixed(x >= 0.999 || x === 0 ? 0 : 1)}%`;

// Replicas histogram: the relay's own when it sends one ("replica_histogram": counts of
// fragments with 0, 1, 2, ... live replicas), else three bins from its summary counts.
function histogram(s) {
  const f = s.fragments ?? {}, R = s.replicas_target ?? 3;
  const h = s.replica_histogram ?? f.replica_histogram;
  if (Array.isArray(h)) return { bins: h.map((n, i) => ({ label: i === h.length - 1 && i >= R ? `${i}+` : String(i), n, zero: i === 0 })), exact: true };
  const total = f.total ?? 0, lost = f.lost ?? 0, under = f.under_replicated ?? 0;
  return { bins: [{ label: '0', n: lost, zero: true }, { label: `1–${R - 1}`, n: Math.max(0, under - lost) }, { label: `${R}+`, n: Math.max(0, total - under) }], exact: false };
}

function render(s) {
  const f = s.fragments ?? {}, c = s.counters ?? {};
  const total = f.total ?? 0, covered = total - (f.lost ?? 0);
  $('#nodes-online').textContent = (s.nodes?.live ?? 0).toLocaleString();
  $('#coverage').textContent = total ? pct(covered / total) : '—';
  $('#failovers').textContent = (c.requests_resent ?? 0).toLocaleString();
  $('#models-count').textContent = (s.models ?? []).length;
  $('#fragments').textContent = total.toLocaleString();
  $('#stored').textContent = bytes(f.bytes_stored ?? 0);
  $('#inflight').textContent = (s.requests_inflight ?? 0).toLocaleString();
  $('#relay-line').textContent = `${s.relay ?? 'relay'} up ${duration(s.uptime_s ?? 0)} · replication target R = ${s.replicas_target ?? 3} · refreshed every 2 s`;

  const now = performance.now(), done = c.requests_completed ?? 0;
  if (prev) {
    const r = Math.max(0, (done - prev.done) / ((now - prev.t) / 1000));
    rates.push(r);
    if (rates.length > 60) rates.shift();
    $('#rps').textContent = r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString();
  }
  prev = { t: now, done };
  // The last 60 samples, newest on the right; one sample draws a flat line.
  // Headroom above the peak so that a steady rate does not hug the top edge.
  const peak = Math.max(0, ...rates), max = Math.max(1, peak), top = max * 1.25, pts = rates.length === 1 ? [rates[0], rates[0]] : rates;
  const xy = pts.map((r, i) => `${pts.length === 2 && rates.length === 1 ? 300 * i : 300 - 5 * (pts.length - 1 - i)},${58 - (50 * r) / top}`);
  $('#spark polyline').setAttribute('points', xy.join(' '));
  $('#spark polygon').setAttribute('points', xy.length ? `${xy[0].split(',')[0]},60 ${xy.join(' ')} 300,60` : '');
  $('#req-note').textContent = `${done.toLocaleString()} answered in all · ${(c.requests_failed ?? 0).toLocaleString()} failed · peak ${peak.toFixed(1)}/s over the last two minutes`;

  const { bins, exact } = histogram(s);
  const hmax = Math.max(1, ...bins.map(b => b.n));
  $('#histogram').replaceChildren(...bins.map(b => el('div', { class: `bar${b.zero ? ' zero' : ''}`, title: `${b.n} fragments with ${b.label} replicas` },
    el('small', { text: String(b.n) }), el('span', { style: `height:${Math.round(100 * b.n / hmax)}%` }), el('small', { text: b.label }))));
  $('#hist-note').textContent = `Live replicas per fragment${exact ? '' : ' (grouped)'}; red: fragments nobody serves.`;

  const models = s.models ?? [];
  $('#models').replaceChildren(...(models.length ? models.map(m => el('tr', {},
    el('td', { class: 'name', text: m.name ?? m.id.slice(0, 12) }), el('td', { class: 'num', text: m.fragments }), el('td', { class: 'num wide', text: bytes(m.bytes) }),
    el('td', { class: 'num', text: m.fragments ? pct((m.fragments - m.fragments_lost) / m.fragments) : '—' }),
    el('td', { class: 'num wide', text: m.fragments_under_replicated }))) : [el('tr', {}, el('td', { colspan: 5, class: 'empty', text: 'No model yet.' }))]));

  const nodes = s.live_nodes ?? [];
  $('#node-list').replaceChildren(...(nodes.length ? nodes.map(n => el('tr', {},
    el('td', { class: 'key', title: n.key ?? '', text: n.key ? n.key.slice(0, 8) : `#${n.index}` }), el('td', { class: 'num', text: duration(n.uptime_s ?? 0) }),
    el('td', { class: 'num', text: n.fragments }), el('td', { class: 'num wide', text: bytes(n.used ?? 0) }),
    el('td', { class: 'num', text: (n.served ?? 0).toLocaleString() }), el('td', { class: 'num wide', text: n.inflight ?? 0 }),
    el('td', { class: 'num wide', text: n.timeouts ?? 0 }))) : [el('tr', {}, el('td', { colspan: 7, class: 'empty', text: 'No node online.' }))]));
}

async function poll() {
  try {
    const r = await fetch('/api/stats', { cache: 'no-store' });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    render(await r.json());
    $('#status').dataset.state = 'online';
    $('#status-text').textContent = 'Live';
  } catch {
    $('#status').dataset.state = 'offline';
    $('#status-text').textContent = navigator.onLine ? 'Relay unreachable' : 'Offline';
  }
  setTimeout(poll, PERIOD);
}
poll();
