// edgekit in the browser: load an edgekit GPT model file and generate with onnxruntime-web, giving the same
// token ids as the Python runtime (runtime/gpt.py) for the same file, prompt and options.
//
//   import { load } from './edgekit.js';
//   const lm = await load('model.onnx');                         // fetches the file, reads its ModelCard
//   const g = await lm.generate('def get_', { max_new_tokens: 32 });   // g.text, g.token_ids, g.tokens_per_s
//   for await (const piece of lm.stream('import ', { temperature: 0.8, top_k: 40, seed: 1 })) out += piece;
//
// Options are Python's SamplingOptions, by the same names (max_new_tokens, temperature, top_k, top_p, seed,
// stop, heal, window, repeat_penalty, repeat_last_n). The decode loop is GPTModel.run's, step for step: the
// first token is taken here (token healing, the repetition penalty, numpy's sampler in sampling.js), then
// the file's ONNX Loop runs many passes per call with its in-graph sampler (16 per call while streaming,
// all that fit otherwise), drawing uniforms from numpy's default_rng(seed) (random.js); sampling without
// top_k runs one pass per call and samples here. onnxruntime is passed in (`ort`), or onnxruntime-web is
// imported (a page maps the bare name with an import map; `edgekit web` writes one).

import { readCard } from './modelfile.js';
import { defaultRng } from './random.js';
import { penalize, sampleNext, samplingOptions } from './sampling.js';
import { fromSpec } from './tokenizer.js';

export { readCard } from './modelfile.js';
export { fromSpec } from './tokenizer.js';
export { defaultRng } from './random.js';

const now = () => globalThis.performance.now() / 1e3;

/** One completion, as Python's Generation (the same field names). */
export class Generation {
  constructor(f) { Object.assign(this, f); }
}

/** An onnxruntime int64 tensor from numbers. */
function int64(ort, values, dims) {
  return new ort.Tensor('int64', BigInt64Array.from(values, (v) => BigInt(v)), dims);
}

/** The per-generation state of one row (Python's _Rows for B = 1): context ids, output, text, stop. */
class Row {
  constructor(healed, keep, block, tokenizer) {
    this.healed = healed;
    this.ids = healed.ids.length <= block ? [...healed.ids] : healed.ids.slice(-keep);
    this.out = [];
    this.done = false;
    this.reason = 'length';
    this.text = '';
    this.decoder = tokenizer.streamDecoder();
  }

  accept(tid, first, eot, stop, onToken) {
    if (this.done) return;
    if (eot !== null && tid === eot) {
      this.done = true;
      this.reason = 'eot';
      return;
    }
    this.out.push(tid);
    this.ids.push(tid);
    let piece = this.decoder.push(tid, first ? this.healed.skip : 0);
    this.text += piece;
    const hits = stop.filter((s) => this.text.includes(s));
    if (hits.length) {
      const cut = Math.min(...hits.map((s) => this.text.indexOf(s)));
      piece = piece.slice(0, Math.max(0, piece.length - (this.text.length - cut)));
      this.text = this.text.slice(0, cut);
      this.done = true;
      this.reason = 'stop';
    }
    if (onToken && piece) onToken(piece);
  }

  flush(onToken) {
    const tail = this.decoder.flush();
    if (tail && this.reason !== 'stop') {
      this.text += tail;
      if (onToken) onToken(tail);
    }
  }
}

/** A loaded GPT model file: ``generate``, ``stream`` and ``run`` (token ids in, Generation out). */
export class GPTModel {
  constructor(session, card, ort, path) {
    if (card.family !== 'gpt') throw new Error(`${path}: family '${card.family}' has no browser runtime; only gpt`);
    const need = ['input_ids', 'attention_mask', 'steps', 'uniforms', 'recent_ids'];
    const missing = need.filter((n) => !session.inputNames.includes(n));
    if (missing.length) {
      throw new Error(`${path}: graph lacks inputs ${missing.join(', ')}; export it again with a current edgekit`);
    }
    this.session = session;
    // files exported since edgekit serve take the sampler's settings per row ((B, 1), a batch's largest k)
    this.rowSampler = session.inputNames.includes('row_top_k');
    this.card = card;
    this.ort = ort;
    this.path = path;
    this.family = 'gpt';
    this.tokenizer = fromSpec(card.tokenizer);
    this.blockSize = card.block_size;
    this.vocabSize = card.vocab_size;
    this.keep = card.window_keep;
    const cfg = card.config;
    this.nLayer = cfg.n_layer;
    this.nHead = cfg.n_head;
    this.headSize = cfg.n_embd / cfg.n_head;
    this.pastNames = [];
    for (let i = 0; i < this.nLayer; i++) this.pastNames.push(`past.${i}.key`, `past.${i}.value`);
    this.presentNames = this.pastNames.map((n) => n.replace('past.', 'present.'));
  }

  emptyPast() {
    const z = new Float32Array(0);
    return this.pastNames.map(() => new this.ort.Tensor('float32', z, [1, this.nHead, 0, this.headSize]));
  }

  /** The Loop's sampler inputs (GPTModel._sampler_feed, one row); greedy is top_k 1 at temperature 1. */
  samplerFeed(opts, uniforms, recent) {
    const ort = this.ort;
    const greedy = opts.temperature === 0;
    const penalty = opts.repeat_last_n ? opts.repeat_penalty : 1.0;
    const k = greedy ? 1 : Math.min(opts.top_k ?? this.vocabSize, this.vocabSize);
    const shape = this.rowSampler ? [1, 1] : [];  // per-row files: (B, 1) settings
    const f32 = (v) => new ort.Tensor('float32', Float32Array.of(v), shape);
    const feed = {
      uniforms: new ort.Tensor('float32', Float32Array.from(uniforms), [uniforms.length, 1]),
      temperature: f32(greedy ? 1.0 : opts.temperature),
      top_k: int64(ort, [k], [1]),
      top_p: f32(greedy || opts.top_p === null ? 1.0 : opts.top_p),
      repeat_penalty: f32(penalty),
      recent_ids: int64(ort, recent, [1, recent.length]),
    };
    if (this.rowSampler) {
      feed.row_top_k = int64(ort, [k], [1, 1]);
      feed.recent_window = int64(ort, [recent.length], [1, 1]);
    }
    return feed;
  }

  /** The last N = repeat_last_n context ids (at most the block), left-padded with the first (GPTModel._recent). */
  recent(ids, opts) {
    const n = opts.repeat_penalty !== 1.0 && opts.repeat_last_n ? Math.min(opts.repeat_last_n, this.blockSize) : 1;
    const tail = ids.length ? ids.slice(-n) : [0];
    return [...Array(n - tail.length).fill(tail[0]), ...tail];
  }

  /** One onnxruntime call: ``steps`` passes from ``ids`` -> {logits (last pass, vocab wide), past, tokens}. */
  async call(ids, maskLen, past, steps, sampler) {
    const ort = this.ort;
    const feeds = {
      input_ids: int64(ort, ids, [1, ids.length]), attention_mask: int64(ort, new Array(maskLen).fill(1), [1, maskLen]),
      steps: int64(ort, [steps], []),
      ...(sampler || this.samplerFeed(samplingOptions({}, this.vocabSize), new Float32Array(steps), ids.slice(-1))),
    };
    this.pastNames.forEach((n, i) => { feeds[n] = past[i]; });
    const out = await this.session.run(feeds);
    const logits = out.logits;
    const width = logits.dims[2];
    const last = logits.data.subarray((logits.dims[0] - 1) * width, logits.dims[0] * width);
    const tokens = Array.from(out.tokens.data, Number);
    return { logits: Float32Array.from(last), past: this.presentNames.map((n) => out[n]), tokens };
  }

  /** Token healing (GPTModel._heal): cut the prompt's last token; the first new one must extend its bytes. */
  heal(ids) {
    if (ids.length < 2) return { ids, allowed: null, skip: 0 };
    const last = this.tokenizer.tokenBytes(ids[ids.length - 1]);
    if (!last.length) return { ids, allowed: null, skip: 0 };
    const extending = this.tokenizer.idsWithPrefix(last);
    if (extending.length <= 1) return { ids, allowed: null, skip: 0 };
    return { ids: ids.slice(0, -1), allowed: new Set(extending), skip: last.length };
  }

  /** The next id in JS (GPTModel._sample): penalty, healing's mask on the first token, numpy's sampler. */
  sample(logits, opts, ids, rng, healed) {
    let l = logits.subarray(0, this.vocabSize);
    if (opts.repeat_penalty !== 1.0 && opts.repeat_last_n) l = penalize(l, this.recent(ids, opts), opts.repeat_penalty);
    if (healed && healed.allowed) {
      l = Float32Array.from(l);
      for (let i = 0; i < l.length; i++) if (!healed.allowed.has(i)) l[i] = -Infinity;
    }
    return sampleNext(l, opts, rng.random(1)[0]);
  }

  /** Generate from prompt ids with explicit options (GPTModel.run for one row); onToken(piece) streams text. */
  async run(promptIds, given, onToken = null) {
    const opts = samplingOptions(given, this.vocabSize);
    const rng = defaultRng(opts.seed);
    const healed = opts.heal ? this.heal([...promptIds]) : { ids: [...promptIds], allowed: null, skip: 0 };
    const block = this.blockSize;
    const keep = opts.window === 'exact' ? block : this.keep;
    const row = new Row(healed, keep, block, this.tokenizer);
    const looped = opts.temperature === 0 || opts.top_k !== null;  // else: one pass per call, sampled here
    const chunk = onToken ? 16 : opts.max_new_tokens;
    const eot = this.tokenizer.eotId;
    let slides = 0;
    let ttft = null;
    let pending = [];
    const t0 = now();
    let { logits, past } = await this.call(row.ids, row.ids.length, this.emptyPast(), 1, null);
    let maskLen = row.ids.length;
    for (let step = 0; step < opts.max_new_tokens; step++) {
      const nxt = pending.length ? pending.shift() : this.sample(logits, opts, row.ids, rng, step === 0 ? healed : null);
      row.accept(nxt, step === 0, eot, opts.stop, onToken);
      if (ttft === null) ttft = now() - t0;
      if (row.done || step === opts.max_new_tokens - 1) break;
      if (maskLen + 1 > block) {  // full: re-encode the last `keep` tokens (the sliding window)
        slides += 1;
        row.ids = row.ids.slice(-keep);
        ({ logits, past } = await this.call(row.ids, row.ids.length, this.emptyPast(), 1, null));
        maskLen = row.ids.length;
        continue;
      }
      maskLen += 1;
      if (pending.length) continue;  // the last Loop call already computed this pass
      const todo = opts.max_new_tokens - step - 1;
      const room = block - maskLen + 1;
      if (looped && todo > 1 && room > 1) {
        const n = Math.min(todo, room, chunk);
        const sampler = this.samplerFeed(opts, rng.random(n), this.recent(row.ids, opts));
        const r = await this.call([nxt], maskLen, past, n, sampler);
        past = r.past;
        pending = r.tokens;
      } else {
        ({ logits, past } = await this.call([nxt], maskLen, past, 1, null));
      }
    }
    const total = now() - t0;
    row.flush(onToken);
    const after = Math.max(row.out.length - 1, 0);
    return new Generation({
      text: row.text, token_ids: row.out, prompt_ids: [...promptIds], ttft_ms: (ttft ?? total) * 1e3,
      tokens_per_s: ttft !== null && total > ttft && after ? after / (total - ttft) : 0, total_ms: total * 1e3,
      stop_reason: row.reason, window_slides: slides, healed: healed.allowed ? 1 : 0,
    });
  }

  /** Prompt text -> ids, refusing what Python refuses. */
  encode(prompt) {
    if (typeof prompt !== 'string') throw new Error(`prompt must be text; got ${typeof prompt}`);
    if (!prompt) throw new Error('prompt is empty; give at least one character');
    if (!prompt.isWellFormed()) throw new Error('prompt is not valid UTF-8 text (it has undecodable bytes)');
    return this.tokenizer.encode(prompt);
  }

  /** Options over the file's generation defaults (max_new_tokens; temperature stays greedy unless given). */
  options(given = {}) {
    const set = Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined));
    return { max_new_tokens: this.card.generation.max_new_tokens, ...set };
  }

  /**
   * Complete ``prompt``: greedy by default; ``seed`` makes sampling repeatable (Python's tokens for the same seed).
   * @param {string} prompt
   * @param {object} [options] Python's SamplingOptions names
   * @returns {Promise<Generation>}
   */
  async generate(prompt, options = {}) {
    return this.run(this.encode(prompt), this.options(options));
  }

  /**
   * Text pieces as they are decoded (whole UTF-8 characters); the Generation is the iterator's return value.
   * @param {string} prompt
   * @param {object} [options]
   * @returns {AsyncGenerator<string, Generation>}
   */
  async* stream(prompt, options = {}) {
    const pieces = [];
    let wake = null;
    let finished = false;
    let result;
    let error;
    const ids = this.encode(prompt);
    this.run(ids, this.options(options), (p) => { pieces.push(p); if (wake) wake(); })
      .then((g) => { result = g; }, (e) => { error = e; })
      .finally(() => { finished = true; if (wake) wake(); });
    for (;;) {
      while (pieces.length) yield pieces.shift();
      if (finished) break;
      await new Promise((r) => { wake = r; });
      wake = null;
    }
    while (pieces.length) yield pieces.shift();
    if (error) throw error;
    return result;
  }
}

/** The bytes of ``source``: a URL (fetch), a path under Node, or bytes. */
async function bytesOf(source) {
  if (source instanceof Uint8Array) return source;
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  if (typeof process !== 'undefined' && process.versions?.node && !/^https?:/.test(String(source))) {
    const { readFile } = await import('node:fs/promises');
    return new Uint8Array(await readFile(source));
  }
  const r = await fetch(source);
  if (!r.ok) throw new Error(`cannot fetch ${source}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

/**
 * Load an edgekit model file.
 * @param {string|URL|Uint8Array|ArrayBuffer} source  a URL (a path under Node) or the file's bytes
 * @param {{ort?: object, provider?: string, threads?: number, name?: string}} [options]  ``ort``: onnxruntime-web
 *   (default) or onnxruntime-node; ``provider``: 'wasm' (default) or 'cpu' (onnxruntime-node); ``threads``:
 *   intra-op threads (1 by default: wasm threads need a cross-origin isolated page)
 * @returns {Promise<GPTModel>}
 */
export async function load(source, options = {}) {
  const ort = options.ort || await import('onnxruntime-web');
  const name = options.name || (typeof source === 'string' ? source : 'model');
  const bytes = await bytesOf(source);
  const card = readCard(bytes, name);
  const threads = options.threads ?? 1;
  const provider = options.provider || 'wasm';
  const extra = {};  // the file's session entries ("session.disable_quant_qdq") as onnxruntime-js nests them
  for (const [k, v] of Object.entries(card.deploy.session_config)) {
    const [group, name] = k.split('.', 2);
    (extra[group] ||= {})[name] = v;
  }
  if (provider === 'wasm') ort.env.wasm.numThreads = threads;
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: [provider], intraOpNumThreads: threads,
      interOpNumThreads: 1, graphOptimizationLevel: 'all', executionMode: 'sequential', extra,
    });
  } catch (e) {
    throw new Error(`${name} is not a loadable ONNX model (${String(e.message || e).split('\n')[0].slice(0, 160)})`);
  }
  return new GPTModel(session, card, ort, name);
}
