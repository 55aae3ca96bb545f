// The JS runtime against the Python runtime: the same token ids and text for the same file, prompt and
// options, in onnxruntime-node and in onnxruntime-web's wasm backend. Cases: tests/test_web.py
// (EDGEKIT_WEB_CASES): greedy prompts, seeded sampling (top-k, top-p, temperature only, repetition
// penalty), stop strings and sliding-window lengths.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import * as ortNode from 'onnxruntime-node';
import * as ortWeb from 'onnxruntime-web';

import { load } from '../edgekit.js';

const path = process.env.EDGEKIT_WEB_CASES;
const cases = path ? JSON.parse(readFileSync(path, 'utf8')) : null;
const skip = !cases && 'EDGEKIT_WEB_CASES not set (run by tests/test_web.py)';

for (const [name, ort, provider] of [['onnxruntime-node', ortNode, 'cpu'], ['onnxruntime-web (wasm)', ortWeb, 'wasm']]) {
  test(`${name}: Python's tokens`, { skip }, async () => {
    for (const m of cases.models) {
      const lm = await load(m.path, { ort, provider });
      assert.equal(lm.card.deploy.target, m.target);
      const bad = [];
      for (const c of m.cases) {
        const g = await lm.generate(c.prompt, c.options);
        if (JSON.stringify(g.token_ids) !== JSON.stringify(c.token_ids) || g.text !== c.text || g.stop_reason !== c.stop_reason) {
          bad.push(`${JSON.stringify(c.prompt)} ${JSON.stringify(c.options)}: ${JSON.stringify(g.token_ids)} != ${JSON.stringify(c.token_ids)}`);
        }
      }
      assert.deepEqual(bad, [], `${m.path}: ${bad.length} of ${m.cases.length} differ`);
    }
  });
}

test('stream yields the text of generate, piece by piece', { skip }, async () => {
  const m = cases.models[0];
  const lm = await load(m.path, { ort: ortWeb });
  const c = m.cases.find((x) => x.text.length > 8);
  let text = '';
  let pieces = 0;
  const it = lm.stream(c.prompt, c.options);
  let r;
  while (!(r = await it.next()).done) { text += r.value; pieces += 1; }
  assert.equal(text, c.text);
  assert.deepEqual(r.value.token_ids, c.token_ids);
  assert.ok(pieces > 1);
});

test('bad options and prompts are refused with Python\'s messages', { skip }, async () => {
  const lm = await load(cases.models[0].path, { ort: ortWeb });
  await assert.rejects(lm.generate('', {}), /prompt is empty/);
  await assert.rejects(lm.generate('x', { max_new_tokens: 0 }), /max_new_tokens must be an integer from 1/);
  await assert.rejects(lm.generate('x', { temperature: -1 }), /temperature must be 0/);
  await assert.rejects(lm.generate('x', { top_k: 0 }), /top_k must be an integer/);
  await assert.rejects(lm.generate('x', { top_p: 1.5 }), /top_p must be in/);
  await assert.rejects(lm.generate('x', { bogus: 1 }), /unknown option/);
});
