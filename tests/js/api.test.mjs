// api.test.mjs - `essaim api`, the OpenAI-compatible HTTP API: a local model behind
// /v1/completions and /v1/chat/completions answers what `essaim run` answers (greedy, token
// for token), streams the same text as server-sent events, keeps serving after bad
// requests and after a client that leaves mid-stream, and says what is wrong.
// Model: stories260K from the shared test models, else a small synthetic one.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { root, essaimBin, freePort } from './relay_util.mjs';

const models = process.env.ESSAIM_TEST_MODELS ?? join(root, '..', 'shared', 'models');
const have = existsSync(essaimBin);
let proc, base, model, tmp;

async function waitUp(url, ms = 20000) {
  const t0 = Date.now();
  for (;;) {
    try { if ((await fetch(url)).ok) return; } catch { /* not listening yet */ }
    if (Date.now() - t0 > ms) throw new Error(`${url} did not answer within ${ms} ms`);
    await new Promise(r => setTimeout(r, 100));
  }
}

before(async () => {
  if (!have) return;
  tmp = mkdtempSync(join(tmpdir(), 'essaim-api-'));
  model = join(models, 'stories260K.gguf');
  if (!existsSync(model)) {
    model = join(tmp, 'synth.gguf');
    execFileSync(essaimBin, ['synth', '-o', model, '--type', 'Q8_0', '--preset', 'tinyllama-1.1b', '--layers', '2', '--embd', '256',
                             '--heads', '8', '--kv-heads', '2', '--ff', '512', '--vocab-size', '512', '--ctx', '256'], { stdio: 'ignore' });
  }
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  proc = spawn(essaimBin, ['api', model, '--listen', `127.0.0.1:${port}`, '-t', '1', '-c', '128'], { stdio: ['ignore', 'ignore', 'pipe'] });
  proc.stderr.on('data', () => {});
  await waitUp(`${base}/health`);
});

after(() => {
  if (proc) proc.kill('SIGTERM');
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

const post = (path, body) => fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' },
                                                     body: typeof body === 'string' ? body : JSON.stringify(body) });

// Server-sent events of a streamed answer: the JSON chunks, and whether [DONE] ended them.
async function events(res) {
  const text = await res.text();
  const data = text.split('\n\n').filter(s => s.startsWith('data: ')).map(s => s.slice(6));
  return { done: data.at(-1) === '[DONE]', chunks: data.filter(d => d !== '[DONE]').map(d => JSON.parse(d)) };
}

test('GET /v1/models names the model', { skip: !have && 'essaim not built' }, async () => {
  const r = await fetch(`${base}/v1/models`);
  assert.equal(r.status, 200);
  const j = await r.json();
  assert.equal(j.object, 'list');
  assert.equal(j.data[0].id, model.split('/').at(-1));
});

test('greedy /v1/completions equals essaim run, token for token', { skip: !have && 'essaim not built' }, async () => {
  const prompt = 'Once upon a time';
  // essaim run ends its output with a newline of its own; invalid UTF-8 (random models)
  // reads as U+FFFD, as the API's JSON must carry it
  const want = execFileSync(essaimBin, ['run', model, '-p', prompt, '-n', '24', '--temp', '0', '-t', '1'],
                            { stdio: ['ignore', 'pipe', 'ignore'] }).toString('utf8').replace(/\n$/, '');
  const r = await post('/v1/completions', { prompt, max_tokens: 24, temperature: 0 });
  assert.equal(r.status, 200);
  const j = await r.json();
  assert.equal(j.object, 'text_completion');
  assert.equal(j.choices[0].text, want);
  assert.equal(j.choices[0].finish_reason, 'length');
  assert.equal(j.usage.completion_tokens, 24);
  // the same request again (the cache now holds the prompt): the same answer
  const again = await (await post('/v1/completions', { prompt, max_tokens: 24, temperature: 0 })).json();
  assert.equal(again.choices[0].text, want);
});

test('streamed chat equals the whole answer; stop strings end it', { skip: !have && 'essaim not built' }, async () => {
  const req = { messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Tell me a story.' }], max_tokens: 20, temperature: 0 };
  const whole = await (await post('/v1/chat/completions', req)).json();
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices[0].message.role, 'assistant');
  const content = whole.choices[0].message.content;
  assert.ok(content.length > 0);
  const res = await post('/v1/chat/completions', { ...req, stream: true });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /text\/event-stream/);
  const ev = await events(res);
  assert.ok(ev.done, 'the stream ends with [DONE]');
  assert.equal(ev.chunks[0].choices[0].delta.role, 'assistant');
  assert.equal(ev.chunks.map(c => c.choices[0].delta.content ?? '').join(''), content);
  assert.ok(['length', 'stop'].includes(ev.chunks.at(-1).choices[0].finish_reason));
  // a stop string taken from the answer cuts it right before
  const cut = content.trim().split(' ').slice(1, 2).join('');
  if (cut) {
    const s = await (await post('/v1/chat/completions', { ...req, stop: [cut] })).json();
    assert.equal(s.choices[0].finish_reason, 'stop');
    assert.ok(!s.choices[0].message.content.includes(cut));
    assert.ok(content.startsWith(s.choices[0].message.content));
  }
});

test('seeded sampling is reproducible', { skip: !have && 'essaim not built' }, async () => {
  const req = { prompt: 'The cat', max_tokens: 16, temperature: 0.9, top_k: 40, seed: 42 };
  const a = (await (await post('/v1/completions', req)).json()).choices[0].text;
  const b = (await (await post('/v1/completions', req)).json()).choices[0].text;
  assert.equal(a, b);
});

test('bad requests get a 4xx with what is wrong, and the server goes on', { skip: !have && 'essaim not built' }, async () => {
  const cases = [
    [await post('/v1/chat/completions', '{not json'), 400, /not a JSON object/],
    [await post('/v1/chat/completions', { messages: [] }), 400, /'messages'/],
    [await post('/v1/chat/completions', { messages: [{ role: 'user', content: 7 }] }), 400, /content/],
    [await post('/v1/completions', { prompt: '' }), 400, /empty/],
    [await post('/v1/completions', { prompt: 'x', temperature: -1 }), 400, /temperature/],
    [await post('/v1/completions', { prompt: 'x', stop: 5 }), 400, /stop/],
    [await post('/v1/completions', { prompt: 'word '.repeat(400) }), 400, /context/],
    [await fetch(`${base}/v1/chat/completions`), 405, /POST/],
    [await fetch(`${base}/v2/nothing`), 404, /no route/],
  ];
  for (const [res, status, re] of cases) {
    assert.equal(res.status, status);
    const j = await res.json();
    assert.match(j.error.message, re);
  }
  const ok = await post('/v1/completions', { prompt: 'Once', max_tokens: 2, temperature: 0 });
  assert.equal(ok.status, 200);
});

test('a client that leaves mid-stream does not stop the server', { skip: !have && 'essaim not built' }, async () => {
  const ac = new AbortController();
  const res = await fetch(`${base}/v1/completions`, { method: 'POST', signal: ac.signal,
                                                      body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 100, stream: true }) });
  const reader = res.body.getReader();
  await reader.read();
  ac.abort();
  await reader.read().catch(() => {});
  const r = await post('/v1/completions', { prompt: 'Once', max_tokens: 2, temperature: 0 });
  assert.equal(r.status, 200);
  assert.equal((await r.json()).usage.completion_tokens, 2);
});
