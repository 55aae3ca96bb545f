// GPT sampling in JavaScript, mirroring runtime/gpt_sampling.py (numpy) operation for operation.
//
//   const opts = samplingOptions({max_new_tokens: 32, temperature: 0.8, top_k: 40, seed: 1}, vocab);
//   const next = sampleNext(penalize(logits, recent, 1.1), opts, u);   // one row: the next id
//
// The first token of a generation (and every token when sampling without top_k) is drawn here, as Python
// draws it in numpy; the rest are drawn by the sampler inside the file's ONNX Loop. To give the same ids,
// the arithmetic follows numpy's: float32 where numpy computes in float32 (Math.fround after every
// operation), numpy's pairwise summation for ``sum`` (sequential for ``cumsum``), ties to the lower id.
// The only operation that may differ in the last bit is exp (numpy's SIMD float32 exp vs Math.exp rounded):
// it moves a pick only when a uniform falls within ~1e-7 of a cumulative boundary.

const f32 = Math.fround;
const f64 = (x) => x;
export const MAX_NEW_TOKENS_LIMIT = 100000;
export const MIN_TEMPERATURE = 1e-3;
export const WINDOWS = ['slide', 'exact'];

/** The options of one generation, Python's SamplingOptions field for field (snake_case, the same defaults). */
export const DEFAULTS = Object.freeze({
  max_new_tokens: 64, temperature: 0.0, top_k: null, top_p: null, seed: null, stop: [], heal: true,
  window: 'slide', repeat_penalty: 1.0, repeat_last_n: 64,
});

const isInt = (v) => Number.isInteger(v);

/**
 * Options merged over the defaults and validated as Python validates them (the same messages).
 * @param {object} given  options by Python's names; unknown names are refused
 * @param {number} vocab  the vocabulary size (top_k's upper bound)
 * @returns {object} frozen options
 */
export function samplingOptions(given, vocab) {
  const unknown = Object.keys(given || {}).filter((k) => !(k in DEFAULTS));
  if (unknown.length) throw new Error(`unknown option(s) ${unknown.join(', ')}; known: ${Object.keys(DEFAULTS).join(', ')}`);
  const o = { ...DEFAULTS };
  for (const [k, v] of Object.entries(given || {})) if (v !== undefined) o[k] = v;
  if (typeof o.stop === 'string') o.stop = [o.stop];
  if (!WINDOWS.includes(o.window)) throw new Error(`window must be one of ${WINDOWS.join(', ')}; got ${o.window}`);
  if (!isInt(o.max_new_tokens) || o.max_new_tokens < 1 || o.max_new_tokens > MAX_NEW_TOKENS_LIMIT) {
    throw new Error(`max_new_tokens must be an integer from 1 to ${MAX_NEW_TOKENS_LIMIT}; got ${o.max_new_tokens}`);
  }
  if (!(typeof o.temperature === 'number' && (o.temperature === 0 || (o.temperature >= MIN_TEMPERATURE && o.temperature <= 100)))) {
    throw new Error(`temperature must be 0 (greedy) or from ${MIN_TEMPERATURE} to 100; got ${o.temperature}`);
  }
  if (o.top_k !== null && !(isInt(o.top_k) && o.top_k >= 1 && o.top_k <= vocab)) {
    throw new Error(`top_k must be an integer from 1 to the vocabulary size ${vocab}; got ${o.top_k}`);
  }
  if (o.top_p !== null && !(typeof o.top_p === 'number' && o.top_p > 0 && o.top_p <= 1)) {
    throw new Error(`top_p must be in (0, 1]; got ${o.top_p}`);
  }
  if (!(typeof o.repeat_penalty === 'number' && o.repeat_penalty > 0 && o.repeat_penalty <= 100)) {
    throw new Error(`repeat_penalty must be in (0, 100] (1 = off); got ${o.repeat_penalty}`);
  }
  if (!isInt(o.repeat_last_n) || o.repeat_last_n < 0) {
    throw new Error(`repeat_last_n must be a non-negative integer (0 = off); got ${o.repeat_last_n}`);
  }
  if (!Array.isArray(o.stop) || o.stop.some((s) => typeof s !== 'string' || !s)) throw new Error('stop strings must be non-empty text');
  o.stop = Object.freeze([...o.stop]);
  return Object.freeze(o);
}

/** numpy's pairwise sum of a[lo, lo+n) (numpy/_core/src/umath/loops_utils.h.src), rounding with ``r``. */
export function pairwiseSum(a, lo, n, r) {
  if (n < 8) {
    let res = -0.0;
    for (let i = 0; i < n; i++) res = r(res + a[lo + i]);
    return res;
  }
  if (n <= 128) {
    const p = [];
    for (let j = 0; j < 8; j++) p.push(a[lo + j]);
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) p[j] = r(p[j] + a[lo + i + j]);
    let res = r(r(r(p[0] + p[1]) + r(p[2] + p[3])) + r(r(p[4] + p[5]) + r(p[6] + p[7])));
    for (; i < n; i++) res = r(res + a[lo + i]);
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return r(pairwiseSum(a, lo, n2, r) + pairwiseSum(a, lo + n2, n - n2, r));
}

/** llama.cpp's repetition penalty on one row of float32 logits (a copy): seen ids / penalty when positive, * otherwise. */
export function penalize(logits, recent, penalty) {
  if (penalty === 1.0 || recent.length === 0) return logits;
  const out = Float32Array.from(logits);
  const p = f32(penalty);
  for (const id of recent) {
    const seen = logits[id];
    out[id] = seen > 0 ? f32(seen / p) : f32(seen * p);
  }
  return out;
}

function maxOf(a) {
  let m = -Infinity;
  for (const v of a) if (v > m) m = v;
  return m;
}

/** Index of the largest value, the first on ties (numpy's argmax). */
export function argmax(a) {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

/** The k largest ids by descending value, ties to the lower id (runtime/gpt_sampling.top_k_ids). */
export function topKIds(a, k) {
  const ids = Array.from(a.keys());
  // compared, not subtracted: -inf - -inf is NaN; equal values (infinities too) go by id
  ids.sort((x, y) => (a[x] === a[y] ? x - y : a[y] > a[x] ? 1 : -1));
  return ids.slice(0, k);
}

/** The next id of one row from float32 logits and one uniform ``u`` (runtime/gpt_sampling.sample_next). */
export function sampleNext(logits, opts, u) {
  if (opts.temperature === 0) return argmax(logits);
  const topP = opts.top_p === null ? 1.0 : opts.top_p;
  if (opts.top_k !== null) {
    const k = Math.min(opts.top_k, logits.length);
    const idx = topKIds(logits, k);
    const t = f32(opts.temperature);
    const z = idx.map((i) => f32(logits[i] / t));
    const zmax = maxOf(z);
    const e = z.map((v) => f32(Math.exp(f32(v - zmax))));
    const s = pairwiseSum(e, 0, k, f32);
    const p = e.map((v) => f32(v / s));
    const q = new Array(k);
    let c = 0;
    for (let i = 0; i < k; i++) {
      c = f32(c + p[i]);
      q[i] = f32(c - p[i]) < f32(topP) ? p[i] : 0;
    }
    const c2 = new Array(k);
    let acc = 0;
    for (let i = 0; i < k; i++) c2[i] = acc = f32(acc + q[i]);
    const thr = f32(f32(u) * maxOf(c2));
    let pick = 0;
    for (const v of c2) if (v < thr) pick++;
    return idx[Math.min(pick, k - 1)];
  }
  const V = logits.length;
  const z = new Float64Array(V);
  for (let i = 0; i < V; i++) z[i] = logits[i] / opts.temperature;
  let zmax = -Infinity;
  for (const v of z) if (v > zmax) zmax = v;
  let p = z.map((v) => Math.exp(v - zmax));
  let s = pairwiseSum(p, 0, V, f64);
  p = p.map((v) => v / s);
  if (topP < 1) {
    const order = Array.from(p.keys()).sort((x, y) => (p[y] - p[x]) || (x - y));
    const keep = new Uint8Array(V);
    let c = 0;
    for (const i of order) {
      c += p[i];
      keep[i] = c - p[i] < topP ? 1 : 0;
    }
    p = p.map((v, i) => (keep[i] ? v : 0));
    s = pairwiseSum(p, 0, V, f64);
    p = p.map((v) => v / s);
  }
  let c = 0;
  let pick = 0;
  for (const v of p) {
    c += v;
    if (c < u) pick++;
  }
  return Math.min(pick, V - 1);
}
