// Reading an edgekit model file's metadata in JavaScript (the format: docs/model-file.md).
//
//   const card = readCard(bytes, 'soma.onnx');   // card.family, card.block_size, card.tokenizer, card.deploy.target
//
// onnxruntime's JavaScript API does not expose metadata_props, so this reads the ModelProto's protobuf
// directly: top-level field 14 (metadata_props, repeated StringStringEntryProto: key = 1, value = 2); every
// other field (the graph, field 7, holds the weights) is skipped by its length without being parsed. A
// dozen lines of wire format, not a protobuf library (the ~14 MB of onnxruntime-web already carries one
// inside its wasm, not reachable from JS). The card is validated by the same rules as Python's
// ModelCard.from_dict; both are tested on the same files (tests/test_web.py).

export const META_KEY = 'edgekit';
export const FORMAT_VERSION = 1;
export const TARGETS = ['cpu', 'web'];
export const REQUIRED_CONFIG = {
  gpt: ['block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd'], seqae: ['input_dim', 'bottleneck'],
  amn: ['dim', 'ctx'], bytecnn: [],
};
export const REQUIRED_KEYS = { gpt: ['tokenizer'] };
export const SESSION_CONFIG = { 'session.disable_quant_qdq': ['0', '1'] };

/** A protobuf wire-format reader over bytes: varints and field skipping. */
class Wire {
  constructor(bytes, path) { this.b = bytes; this.i = 0; this.path = path; }

  varint() {
    let v = 0;
    let mul = 1;
    for (let n = 0; n < 10; n++) {
      if (this.i >= this.b.length) this.fail('truncated');
      const byte = this.b[this.i++];
      v += (byte & 0x7f) * mul;
      if (byte < 0x80) return v;
      mul *= 128;
    }
    return this.fail('bad varint');
  }

  fail(why) { throw new Error(`${this.path} is not a loadable ONNX model (${why})`); }

  /** [field number, wire type, payload (Uint8Array for length-delimited, else null)] */
  field() {
    const tag = this.varint();
    const num = Math.floor(tag / 8);
    const type = tag & 7;
    if (type === 0) { this.varint(); return [num, type, null]; }
    if (type === 1 || type === 5) {
      this.i += type === 1 ? 8 : 4;
      if (this.i > this.b.length) this.fail('truncated');
      return [num, type, null];
    }
    if (type === 2) {
      const n = this.varint();
      if (this.i + n > this.b.length) this.fail('truncated');
      const payload = this.b.subarray(this.i, this.i + n);
      this.i += n;
      return [num, type, payload];
    }
    return this.fail(`wire type ${type}`);
  }
}

/** The ModelProto's metadata_props as a Map (key -> value). */
export function metadataProps(bytes, path = 'model') {
  const w = new Wire(bytes, path);
  const props = new Map();
  const dec = new TextDecoder('utf-8', { fatal: true });
  while (w.i < bytes.length) {
    const [num, type, payload] = w.field();
    if (num !== 14 || type !== 2) continue;
    const e = new Wire(payload, path);
    let k = '';
    let v = '';
    while (e.i < payload.length) {
      const [n, t, p] = e.field();
      if (t === 2 && n === 1) k = dec.decode(p);
      if (t === 2 && n === 2) v = dec.decode(p);
    }
    props.set(k, v);
  }
  return props;
}

const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isInt = (v) => Number.isInteger(v);
const typeOk = { object: isObj, int: isInt, float: (v) => typeof v === 'number', str: (v) => typeof v === 'string' };

/** Validates as ModelCard.from_dict does; returns the card (a frozen plain object, Python's attribute names). */
export function cardFromObject(meta, path = 'model') {
  const fail = (msg) => { throw new Error(`${path}: edgekit metadata ${msg}`); };
  const typed = (src, k, kind, dflt = null, required = false) => {
    const v = src[k];
    if (v === undefined || v === null) {
      if (required) fail(`lacks '${k}'`);
      return dflt;
    }
    if (!typeOk[kind](v)) fail(`'${k}' must be ${kind === 'object' ? 'an object' : 'a ' + kind}; got ${JSON.stringify(v).slice(0, 40)}`);
    return v;
  };
  if (!isObj(meta)) fail(`must be a JSON object; got ${Array.isArray(meta) ? 'list' : typeof meta}`);
  const missing = ['format', 'family', 'config'].filter((k) => !(k in meta));
  if (missing.length) fail(`lacks ${missing.join(', ')}`);
  if (meta.format !== FORMAT_VERSION) {
    const shown = typeof meta.format === 'string' ? `'${meta.format}'` : JSON.stringify(meta.format);  // as Python's repr
    throw new Error(`${path}: edgekit metadata format ${shown} is not supported (this edgekit reads format ${FORMAT_VERSION})`);
  }
  const family = typed(meta, 'family', 'str', null, true);
  const config = typed(meta, 'config', 'object', null, true);
  for (const k of REQUIRED_CONFIG[family] || []) {
    if (!(isInt(config[k]) && config[k] > 0)) fail(`config.${k} must be a positive integer for family '${family}'; got ${config[k]}`);
  }
  for (const k of REQUIRED_KEYS[family] || []) typed(meta, k, 'object', null, true);
  const card = { format: FORMAT_VERSION, family, config, edgekit_version: String(meta.edgekit_version ?? '?') };
  if ('tokenizer' in meta) {
    const tok = typed(meta, 'tokenizer', 'object');
    if (!tok || typeof tok.kind !== 'string') fail("'tokenizer' must be an object with a 'kind' (gpt2, bpe or char)");
    const vocab = typed(meta, 'vocab_size', 'int', config.vocab_size);
    const block = typed(meta, 'block_size', 'int', config.block_size);
    if (!(isInt(vocab) && vocab > 0 && isInt(block) && block > 0)) fail(`vocab_size and block_size must be positive integers; got ${vocab}, ${block}`);
    const eot = typed(typed(meta, 'special_tokens', 'object', {}), 'eot', 'int');
    if (eot !== null && !(eot >= 0 && eot < Math.max(vocab, config.vocab_size || 0))) fail(`special_tokens.eot ${eot} is outside the vocabulary (0..${vocab - 1})`);
    const keep = typed(typed(meta, 'window', 'object', {}), 'keep', 'int', block - Math.floor(block / 4));
    if (!(keep >= 1 && keep <= block)) fail(`window.keep must be from 1 to block_size ${block}; got ${keep}`);
    const gen = typed(meta, 'generation', 'object', {});
    Object.assign(card, {
      tokenizer: tok, vocab_size: vocab, eot_id: eot, block_size: block, window_keep: keep,
      generation: { max_new_tokens: typed(gen, 'max_new_tokens', 'int', 64), temperature: typed(gen, 'temperature', 'float', 0.0) },
    });
  }
  const q = typed(meta, 'quantization', 'object', { scheme: 'fp32' });
  card.quantization = { scheme: typed(q, 'scheme', 'str', 'fp32'), recipe: q };
  const d = typed(meta, 'deploy', 'object', {});
  const target = typed(d, 'target', 'str', 'cpu');
  if (!TARGETS.includes(target)) fail(`deploy.target '${target}' is not known; known: ${TARGETS.join(', ')}`);
  const sessionConfig = typed(d, 'session_config', 'object', {});
  for (const [k, v] of Object.entries(sessionConfig)) {
    if (!(SESSION_CONFIG[k] || []).includes(v)) {
      fail(`deploy.session_config ${k}=${JSON.stringify(v)} is not allowed; allowed: `
        + Object.entries(SESSION_CONFIG).map(([n, vs]) => `${n} in ${vs.join('/')}`).join(', '));
    }
  }
  card.deploy = { target, numerics: typed(d, 'numerics', 'str', 'onnxruntime CPU'), session_config: sessionConfig };
  card.verification = typed(meta, 'verification', 'object', {});
  card.source = {
    checkpoint: typed(meta, 'source_checkpoint', 'str'), sha256: typed(meta, 'source_sha256', 'str'),
    format: typed(meta, 'source_format', 'str'), iteration: typed(meta, 'source_iter', 'int'),
    best_val_loss: typed(meta, 'source_best_val_loss', 'float'),
  };
  return deepFreeze(card);
}

function deepFreeze(o) {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}

/**
 * The ModelCard of an edgekit model file's bytes.
 * @param {Uint8Array} bytes the whole .onnx file
 * @param {string} path  the name errors mention
 */
export function readCard(bytes, path = 'model') {
  if (!bytes.length) throw new Error(`model file ${path} is empty`);
  const raw = metadataProps(bytes, path).get(META_KEY);
  if (raw === undefined) {
    throw new Error(`${path} has no edgekit metadata; export it with \`edgekit export\` (plain ONNX files are not edgekit models)`);
  }
  let meta;
  try {
    meta = JSON.parse(raw);
  } catch (e) {
    throw new Error(`${path}: edgekit metadata is not valid JSON (${e.message}); the file was altered`);
  }
  return cardFromObject(meta, path);
}
