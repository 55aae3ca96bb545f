// numpy's default random generator in JavaScript: numpy.random.default_rng(seed).random(n), bit for bit.
//
//   const rng = defaultRng(1);  rng.random(3)   // the same three doubles as Python's default_rng(1).random(3)
//
// Written by hand (no npm package reproduces numpy's stream): edgekit's Python runtime draws one uniform per
// generated token from default_rng(seed), and a seeded generation must give the same tokens in the browser.
// Keeping numpy's generator on the Python side (instead of a simpler one on both sides) keeps every seeded
// result Python users already have. Two parts, each from numpy's source:
//   SeedSequence (numpy/random/bit_generator.pyx): the seed's 32-bit words hashed into a 4-word pool, then
//     generate_state(4, uint64): 8 hashed 32-bit words -> 4 little-endian uint64 words;
//   PCG64 (numpy/random/src/pcg64): 128-bit LCG state, XSL-RR output; set_seed(initstate = s0:s1,
//     initseq = s2:s3); a double is (next64 >> 11) * 2^-53.
// 128-bit arithmetic is BigInt: one draw per token costs microseconds.

const M32 = 0xffffffffn;
const M64 = (1n << 64n) - 1n;
const M128 = (1n << 128n) - 1n;
const PCG_MULT = (0x2360ed051fc65da4n << 64n) + 0x4385df649fccf645n;
const INIT_A = 0x43b0d7e5n, MULT_A = 0x931e8875n, INIT_B = 0x8b51f9ddn, MULT_B = 0x58f38dedn;
const MIX_MULT_L = 0xca01f9ddn, MIX_MULT_R = 0x4973f715n, XSHIFT = 16n, POOL = 4;

/** The seed's little-endian 32-bit words (numpy's _coerce_to_uint32_array for a non-negative int). */
function seedWords(seed) {
  let s = BigInt(seed);
  if (s < 0n) throw new RangeError(`seed must be a non-negative integer; got ${seed}`);
  const words = [];
  do { words.push(s & M32); s >>= 32n; } while (s > 0n);
  return words;
}

/** SeedSequence(entropy).generate_state(4, uint64) as four BigInts. */
function seedState(entropy) {
  let hashConst = INIT_A;
  const hashmix = (value) => {
    value = (value ^ hashConst) & M32;
    hashConst = (hashConst * MULT_A) & M32;
    value = (value * hashConst) & M32;
    return value ^ (value >> XSHIFT);
  };
  const mix = (x, y) => {
    const r = (MIX_MULT_L * x - MIX_MULT_R * y) & M32;
    return r ^ (r >> XSHIFT);
  };
  const pool = [];
  for (let i = 0; i < POOL; i++) pool.push(hashmix(i < entropy.length ? entropy[i] : 0n));
  for (let src = 0; src < POOL; src++)
    for (let dst = 0; dst < POOL; dst++)
      if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  for (let src = POOL; src < entropy.length; src++)
    for (let dst = 0; dst < POOL; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
  let hb = INIT_B;
  const words32 = [];
  for (let i = 0; i < 8; i++) {
    let v = (pool[i % POOL] ^ hb) & M32;
    hb = (hb * MULT_B) & M32;
    v = (v * hb) & M32;
    words32.push(v ^ (v >> XSHIFT));
  }
  return [0, 1, 2, 3].map((i) => words32[2 * i] | (words32[2 * i + 1] << 32n));
}

/** numpy.random.Generator(PCG64(seed)): only ``random`` (uniform doubles in [0, 1)), what edgekit draws. */
export class Generator {
  /** @param {number|bigint|null|undefined} seed a non-negative integer, or null for fresh OS entropy */
  constructor(seed) {
    let entropy;
    if (seed === null || seed === undefined) {
      const w = new Uint32Array(4);
      globalThis.crypto.getRandomValues(w);
      entropy = Array.from(w, (x) => BigInt(x));
    } else {
      if (!(typeof seed === 'bigint' || Number.isSafeInteger(seed))) {
        throw new TypeError(`seed must be an integer or null; got ${seed}`);
      }
      entropy = seedWords(seed);
    }
    const [s0, s1, s2, s3] = seedState(entropy);
    const initstate = (s0 << 64n) | s1;
    const initseq = (s2 << 64n) | s3;
    this.inc = ((initseq << 1n) | 1n) & M128;
    this.state = 0n;
    this.step();
    this.state = (this.state + initstate) & M128;
    this.step();
  }

  step() {
    this.state = (this.state * PCG_MULT + this.inc) & M128;
  }

  /** The next 64-bit output (XSL-RR of the state after one step), a BigInt. */
  next64() {
    this.step();
    const s = this.state;
    const x = ((s >> 64n) ^ s) & M64;
    const rot = s >> 122n;
    return ((x >> rot) | (x << ((64n - rot) & 63n))) & M64;
  }

  /** ``n`` uniforms in [0, 1), as numpy's Generator.random(n) draws them. */
  random(n) {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = Number(this.next64() >> 11n) * 2 ** -53;
    return out;
  }
}

/** numpy.random.default_rng(seed). */
export function defaultRng(seed) {
  return new Generator(seed);
}
