// ref.mjs - the llama.cpp reference: runs a GGUF through llama.cpp (node-llama-cpp's prebuilt
// CPU binaries) and prints one JSON object, so essaim's tests can compare against it.
//
//   node tests/ref/ref.mjs --model F [--prompt TEXT | --tokens 1,2,3] [--logits] [--greedy N]
//                          [--threads T] [--ctx C] [--bench --pp 128 --tg 64 --reps 1]
//
// --prompt is tokenized by llama.cpp, which adds BOS when the model asks for it; --tokens are
// evaluated exactly as given (put the BOS id first yourself).
// Output: {tokens: [the evaluated prompt ids], n_vocab,
//          logits: [[n_vocab floats] for each prompt position]   (--logits),
//          greedy: [ids], text: "detokenized greedy ids"          (--greedy N),
//          bench: {pp_tps, tg_tps, pp, tg, reps, threads} (--bench; best of reps)}
//
// Comparisons use plain settings (TOOLCHAIN.md): CPU only, prebuilt binaries, no build, F32
// KV cache, flash attention off, one thread unless --threads says otherwise; greedy is the
// argmax of the logits (lowest id on ties, as llama.cpp's greedy sampler picks). --bench
// instead keeps node-llama-cpp's defaults (F16 KV cache, flash attention as it decides,
// its thread count unless --threads), because that is what essaim's speed is held against.
// Diagnostics go to stderr; stdout carries only the JSON.
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

function usage(msg) {
    if (msg) process.stderr.write(`ref.mjs: ${msg}\n`);
    process.stderr.write("usage: node ref.mjs --model F [--prompt TEXT | --tokens 1,2,3] [--logits] [--greedy N]\n" +
                         "                    [--threads T] [--ctx C] [--bench --pp 128 --tg 64 --reps 1]\n");
    process.exit(2);
}

function parseArgs(argv) {
    const o = { model: null, prompt: null, tokens: null, logits: false, greedy: 0, threads: null, ctx: null,
                bench: false, pp: 128, tg: 64, reps: 1 };
    const int = (v, name) => {
        if (v === undefined || !/^\d+$/.test(v)) usage(`${name} wants a non-negative integer, got '${v}'`);
        return Number(v);
    };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        switch (a) {
            case "--model": o.model = argv[++i]; break;
            case "--prompt": o.prompt = argv[++i] ?? usage("--prompt wants a text"); break;
            case "--tokens":
                o.tokens = (argv[++i] ?? usage("--tokens wants ids")).split(",").filter(s => s !== "").map(s => int(s, "--tokens"));
                break;
            case "--logits": o.logits = true; break;
            case "--greedy": o.greedy = int(argv[++i], "--greedy"); break;
            case "--threads": o.threads = int(argv[++i], "--threads"); break;
            case "--ctx": o.ctx = int(argv[++i], "--ctx"); break;
            case "--bench": o.bench = true; break;
            case "--pp": o.pp = int(argv[++i], "--pp"); break;
            case "--tg": o.tg = int(argv[++i], "--tg"); break;
            case "--reps": o.reps = Math.max(1, int(argv[++i], "--reps")); break;
            case "-h": case "--help": usage();
            default: usage(`unknown option '${a}'`);
        }
    }
    if (!o.model) usage("--model is required");
    if (o.prompt !== null && o.tokens !== null) usage("give --prompt or --tokens, not both");
    return o;
}

// Logits arrive as a Map sorted by value; put them back in token order.
function logitsArray(map, nVocab) {
    const a = new Array(nVocab).fill(null);
    for (const [tok, v] of map) if (tok < nVocab) a[tok] = v;
    return a;
}

function argmax(map) {
    let best = -1, bestV = -Infinity;
    for (const [tok, v] of map) if (v > bestV || (v === bestV && tok < best)) { best = tok; bestV = v; }
    return best;
}

async function main() {
    const o = parseArgs(process.argv.slice(2));
    const llama = await getLlama({ gpu: false, build: "never", skipDownload: true, usePrebuiltBinaries: true,
                                   logLevel: LlamaLogLevel.error });
    const model = await llama.loadModel({ modelPath: o.model, gpuLayers: 0 });
    const out = {};
    const nVocabFile = model.fileInfo?.metadata?.tokenizer?.ggml?.tokens?.length ?? 0;

    let tokens;
    if (o.tokens !== null) tokens = o.tokens;
    else {
        tokens = o.prompt !== null ? model.tokenize(o.prompt) : [];
        if (model.tokens.shouldPrependBosToken && model.tokens.bos !== null) tokens = [model.tokens.bos, ...tokens];
    }
    if (!o.bench && tokens.length === 0) usage("nothing to evaluate: give --prompt or --tokens");
    out.tokens = tokens;
    if (nVocabFile) out.n_vocab = nVocabFile;

    if (o.logits || o.greedy > 0) {
        const need = tokens.length + o.greedy + 1;
        const context = await model.createContext({
            contextSize: Math.max(o.ctx ?? 0, need), threads: o.threads ?? 1, batchSize: Math.max(tokens.length, 1),
            flashAttention: false, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
        });
        const seq = context.getSequence();
        // Logits of the last prompt position are always needed for the first greedy step.
        const input = tokens.map((t, i) => (o.logits || i === tokens.length - 1) ? [t, { generateNext: { logits: true } }] : t);
        const res = await seq.controlledEvaluate(input);
        const nVocab = nVocabFile || res[res.length - 1].next.logits.size;
        if (o.logits) out.logits = res.map(r => logitsArray(r.next.logits, nVocab));
        if (o.greedy > 0) {
            const greedy = [];
            let next = argmax(res[res.length - 1].next.logits);
            for (let k = 0; k < o.greedy; k++) {
                greedy.push(next);
                if (k === o.greedy - 1) break;
                const r = await seq.controlledEvaluate([[next, { generateNext: { logits: true } }]]);
                next = argmax(r[0].next.logits);
            }
            out.greedy = greedy;
            out.text = model.detokenize(greedy);
        }
        await context.dispose();
    }

    if (o.bench) {
        const context = await model.createContext({ contextSize: Math.max(o.ctx ?? 0, o.pp + o.tg + 8),
                                                    ...(o.threads !== null ? { threads: o.threads } : {}) });
        const seq = context.getSequence();
        // Fixed pseudo-random prompt (LCG), ids above the special tokens, like llama-bench's random tokens.
        const nVocab = nVocabFile || 259;
        let x = 12345;
        const pp = [];
        for (let i = 0; i < o.pp; i++) { x = (Math.imul(x, 1103515245) + 12345) >>> 0; pp.push(3 + ((x >>> 8) % Math.max(1, nVocab - 3))); }
        // best of --reps runs (the history cleared between them), as essaim bench does
        let bestPp = 0, bestTg = 0;
        for (let rep = 0; rep < o.reps; rep++) {
            if (rep > 0) await seq.clearHistory();
            const t0 = performance.now();
            const r = await seq.controlledEvaluate(pp.map((t, i) => i === pp.length - 1 ? [t, { generateNext: { token: true } }] : t));
            const t1 = performance.now();
            let tok = r[r.length - 1]?.next.token ?? 3;
            for (let k = 0; k < o.tg; k++) {
                const s = await seq.controlledEvaluate([[tok, { generateNext: { token: true } }]]);
                tok = s[0]?.next.token ?? 3;
            }
            const t2 = performance.now();
            bestPp = Math.max(bestPp, o.pp / ((t1 - t0) / 1000));
            bestTg = Math.max(bestTg, o.tg / ((t2 - t1) / 1000));
        }
        out.bench = { pp: o.pp, tg: o.tg, threads: context.currentThreads ?? o.threads,
                      reps: o.reps, pp_tps: bestPp, tg_tps: bestTg };
        await context.dispose();
    }

    process.stdout.write(JSON.stringify(out) + "\n");
    await model.dispose();
    await llama.dispose();
}

main().catch(err => {
    process.stderr.write(`ref.mjs: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
});
