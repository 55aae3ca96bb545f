// The JS tokenizer against tiktoken on real text: cases written by tests/test_web.py (EDGEKIT_WEB_CASES).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { fromSpec } from '../tokenizer.js';

const path = process.env.EDGEKIT_WEB_CASES;
const cases = path ? JSON.parse(readFileSync(path, 'utf8')) : null;

test('tokenizer: tiktoken ids, decode and healing prefixes on real text', { skip: !cases && 'EDGEKIT_WEB_CASES not set (run by tests/test_web.py)' }, () => {
  for (const t of cases.tokenizers) {
    const tok = fromSpec(t.spec);
    assert.equal(tok.nVocab, t.n_vocab, `${t.name}: vocabulary size`);
    assert.equal(tok.eotId, t.eot_id, `${t.name}: end-of-text id`);
    t.texts.forEach((text, i) => {
      const ids = tok.encode(text);
      assert.deepEqual(ids, t.ids[i], `${t.name}: text ${i} (${JSON.stringify(text.slice(0, 40))})`);
      assert.equal(tok.decode(ids), t.decoded[i], `${t.name}: decode of text ${i}`);
    });
    for (const [id, expected] of t.prefix_ids) {
      assert.deepEqual(tok.idsWithPrefix(tok.tokenBytes(id)), expected, `${t.name}: ids extending token ${id}`);
    }
  }
});
