// Decode speed of edgekit model files in onnxruntime-web's wasm backend (or onnxruntime-node), one thread.
//
//   node --no-liftoff web/bench.mjs --tokens 48 --rounds 3 [--provider wasm|cpu] --prompt-ids 1,2,3 a.onnx b.onnx
//   -> {"a.onnx": {"cpu_s_per_token": [...], "tokens_per_s": 812.3, "token_ids": [...]}, ...}
//   node --no-liftoff web/bench.mjs --serve      # one JSON request per stdin line, one JSON answer per line:
//   {"file": "a.onnx", "tokens": 48, "prompt_ids": [1, 2]} -> {"s_per_token": 0.0003, "token_ids": [...]}
//
// --no-liftoff: V8 compiles onnxruntime's wasm with its optimizing tier up front, so the timing is the steady
// state a page reaches once tier-up has compiled its hot functions (V8's baseline code, what a page runs in
// its first seconds, decodes 3-6x slower here); --serve keeps one process (one compilation) for many timings.
//
// What `edgekit export --target web` times its candidates with, and what benchmarks/test_web.py compares
// against the Python runtime on the same file. A round is one greedy generation of --tokens tokens minus one
// of a single token (prefill and first token cancel out), in process CPU time (single-threaded work on a
// shared machine: CPU time is what the decode costs, wall time adds the neighbours' load); tokens_per_s is
// the median round's. Results on stdout as one JSON object.

import { load } from './edgekit.js';

function args(argv) {
  const o = { tokens: 48, rounds: 3, provider: 'wasm', promptIds: null, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--tokens') o.tokens = Number(argv[++i]);
    else if (a === '--rounds') o.rounds = Number(argv[++i]);
    else if (a === '--provider') o.provider = argv[++i];
    else if (a === '--prompt-ids') o.promptIds = argv[++i].split(',').map(Number);
    else o.files.push(a);
  }
  if (!o.files.length || !(o.tokens > 1) || !(o.rounds >= 1)) {
    throw new Error('usage: node bench.mjs [--tokens N>1] [--rounds R] [--provider wasm|cpu] [--prompt-ids 1,2] FILE...');
  }
  return o;
}

const cpuSeconds = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };

/** One timing round: greedy ``tokens`` minus greedy 1 (prefill and the first token cancel), CPU s per token. */
async function round(lm, ids, tokens) {
  const opts = (n) => ({ max_new_tokens: n, heal: false });
  let t = cpuSeconds();
  const g = await lm.run(ids, opts(tokens));
  const full = cpuSeconds() - t;
  t = cpuSeconds();
  await lm.run(ids, opts(1));
  const one = cpuSeconds() - t;
  return [Math.max(full - one, 1e-9) / Math.max(g.token_ids.length - 1, 1), g.token_ids];
}

/** --serve: answer timing requests from stdin until it closes (export's candidates, benchmarks' rounds). */
async function serve(provider) {
  const ort = provider === 'cpu' ? await import('onnxruntime-node') : await import('onnxruntime-web');
  const models = new Map();
  const { createInterface } = await import('node:readline');
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    try {
      const req = JSON.parse(line);
      if (!models.has(req.file)) {
        const lm = await load(req.file, { ort, provider, threads: 1 });
        await lm.run(req.prompt_ids, { max_new_tokens: req.tokens, heal: false });  // warm-up
        models.set(req.file, lm);
      }
      const [s, ids] = await round(models.get(req.file), req.prompt_ids, req.tokens);
      process.stdout.write(JSON.stringify({ s_per_token: s, token_ids: ids }) + '\n');
    } catch (e) {
      process.stdout.write(JSON.stringify({ error: String(e.message || e) }) + '\n');
    }
  }
}

async function main() {
  if (process.argv.includes('--serve')) {
    const i = process.argv.indexOf('--provider');
    return serve(i > 0 ? process.argv[i + 1] : 'wasm');
  }
  const o = args(process.argv.slice(2));
  const ort = o.provider === 'cpu' ? await import('onnxruntime-node') : await import('onnxruntime-web');
  const models = [];
  for (const f of o.files) models.push([f, await load(f, { ort, provider: o.provider, threads: 1 })]);
  const out = {};
  for (const [f, lm] of models) {
    const ids = o.promptIds || lm.tokenizer.encode('def get_value(self, key):\n').slice(0, 8);
    await lm.run(ids, { max_new_tokens: o.tokens, heal: false });  // warm-up
    out[f] = { ids, rounds: [] };
  }
  for (let r = 0; r < o.rounds; r++) {  // rounds alternate between the files
    for (const [f, lm] of models) {
      const [s, ids] = await round(lm, out[f].ids, o.tokens);
      out[f].rounds.push(s);
      out[f].token_ids = ids;
    }
  }
  const result = {};
  for (const [f, v] of Object.entries(out)) {
    const s = [...v.rounds].sort((a, b) => a - b)[Math.floor(v.rounds.length / 2)];
    result[f] = { cpu_s_per_token: v.rounds, tokens_per_s: 1 / s, token_ids: v.token_ids };
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => { process.stderr.write(`edgekit: error: ${e.message}\n`); process.exit(1); });
