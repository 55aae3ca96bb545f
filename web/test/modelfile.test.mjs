// The JS ModelCard reader against Python's on the same files and the same refusals (tests/test_web.py).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { cardFromObject, readCard } from '../modelfile.js';

const path = process.env.EDGEKIT_WEB_CASES;
const cases = path ? JSON.parse(readFileSync(path, 'utf8')) : null;
const skip = !cases && 'EDGEKIT_WEB_CASES not set (run by tests/test_web.py)';

test('the card read from each file matches Python\'s ModelCard', { skip }, () => {
  for (const c of cases.cards) {
    const card = readCard(new Uint8Array(readFileSync(c.path)), c.path);
    for (const [k, v] of Object.entries(c.expected)) assert.deepEqual(card[k], v, `${c.path}: ${k}`);
  }
});

test('what Python refuses, JavaScript refuses', { skip }, () => {
  for (const r of cases.refused) {
    assert.throws(() => cardFromObject(r.meta, 'bad.onnx'), (e) => e.message.includes(r.message), r.case);
  }
});

test('a file without edgekit metadata, and bytes that are not protobuf, are refused', { skip }, () => {
  for (const r of cases.bad_files) {
    assert.throws(() => readCard(new Uint8Array(readFileSync(r.path)), r.path), (e) => e.message.includes(r.message), r.path);
  }
});
