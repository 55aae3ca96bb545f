// The page `edgekit web` writes: a prompt box, streamed output and tokens/s, all in this browser tab.
//
// For automated checks, ?prompt=...&max_new_tokens=N&temperature=T&seed=S (also top_k, top_p,
// repeat_penalty) runs once on load, writes {"token_ids": [...], "text": "...", "tokens_per_s": x} into
// <pre id="result"> and sets document.title to "done" ("error" and {"error": message} on failure).

import * as ort from 'onnxruntime-web';
import { load } from './edgekit.js';

const $ = (id) => document.getElementById(id);
const NUMBERS = ['max_new_tokens', 'temperature', 'top_k', 'top_p', 'seed', 'repeat_penalty'];
const INTS = new Set(['max_new_tokens', 'top_k', 'seed']);

/** Options from (name -> text) pairs: empty fields are left to the defaults. */
function options(get) {
  const o = {};
  for (const k of NUMBERS) {
    const v = get(k);
    if (v === null || v === undefined || v === '') continue;
    const n = Number(v);
    if (!Number.isFinite(n) || (INTS.has(k) && !Number.isInteger(n))) throw new Error(`${k} must be a number; got ${v}`);
    o[k] = n;
  }
  return o;
}

async function generate(lm, prompt, opts) {
  const out = $('output');
  out.textContent = '';
  const shown = document.createElement('b');
  shown.textContent = prompt;
  out.append(shown);
  const it = lm.stream(prompt, opts);
  let r;
  while (!(r = await it.next()).done) out.append(r.value);
  const g = r.value;
  $('status').textContent = `${g.token_ids.length} tokens, ${g.tokens_per_s.toFixed(0)} tokens/s `
    + `(first token ${g.ttft_ms.toFixed(1)} ms), stopped by ${g.stop_reason}`;
  return g;
}

async function main() {
  ort.env.wasm.wasmPaths = new URL('../ort/', import.meta.url).href;
  const params = new URLSearchParams(location.search);
  let lm;
  try {
    lm = await load(new URL('../model.onnx', import.meta.url).href, { ort, name: 'model.onnx' });
  } catch (e) {
    $('card').textContent = `edgekit: error: ${e.message}`;
    if (params.has('prompt')) { $('result').textContent = JSON.stringify({ error: e.message }); document.title = 'error'; }
    return;
  }
  const c = lm.card;
  $('card').textContent = `${c.source.checkpoint || 'model'}: ${c.config.n_layer} layers, ${c.config.n_embd} wide, `
    + `${c.vocab_size} tokens, context ${c.block_size}; ${c.quantization.scheme} (${c.deploy.numerics}); `
    + 'onnxruntime-web, wasm, 1 thread';
  $('max_new_tokens').value = c.generation.max_new_tokens;
  const go = $('go');
  go.disabled = false;
  go.onclick = async () => {
    go.disabled = true;
    try {
      await generate(lm, $('prompt').value, options((k) => $(k).value));
    } catch (e) {
      $('status').textContent = `edgekit: error: ${e.message}`;
    }
    go.disabled = false;
  };
  if (params.has('prompt')) {
    go.disabled = true;
    const prompt = params.get('prompt');
    $('prompt').value = prompt;
    for (const k of NUMBERS) if (params.has(k)) $(k).value = params.get(k);
    try {
      const g = await generate(lm, prompt, options((k) => params.get(k)));
      $('result').textContent = JSON.stringify({ token_ids: g.token_ids, text: g.text, tokens_per_s: g.tokens_per_s });
      document.title = 'done';
    } catch (e) {
      $('result').textContent = JSON.stringify({ error: e.message });
      document.title = 'error';
    }
    go.disabled = false;
  }
}

main();
