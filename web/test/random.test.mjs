// numpy's default_rng(seed).random(n) in JavaScript, bit for bit (cases from tests/test_web.py).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { defaultRng } from '../random.js';

const path = process.env.EDGEKIT_WEB_CASES;
const cases = path ? JSON.parse(readFileSync(path, 'utf8')) : null;

test('default_rng(seed).random(1000) equals numpy, seeds up to 2**53 - 1', { skip: !cases && 'EDGEKIT_WEB_CASES not set (run by tests/test_web.py)' }, () => {
  for (const c of cases.rng) {
    const rng = defaultRng(c.seed);
    const got = [...rng.random(600), ...rng.random(400)];  // draws continue across calls, as numpy's
    assert.deepEqual(got, c.draws, `seed ${c.seed}`);
  }
});

test('unseeded generators differ', () => {
  assert.notDeepEqual(Array.from(defaultRng(null).random(4)), Array.from(defaultRng(null).random(4)));
});
