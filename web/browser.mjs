// Drive the page `edgekit web` wrote in headless Chromium (Debian's chromium, through puppeteer-core).
//
//   node web/browser.mjs --base http://127.0.0.1:8000/ --cases cases.json [--screenshot page.png]
//   -> [{"token_ids": [...], "text": "...", "tokens_per_s": x}, ...] on stdout, one per case, in order
//
// Each case ({prompt, options}) opens ?prompt=...&max_new_tokens=...&temperature=...&seed=... in a fresh tab
// and waits for document.title "done" (or "error"), then reads <pre id="result">. --screenshot saves the page
// of the last case. What tests/test_web.py and benchmarks/test_web.py run; the flags keep a closed network
// quiet (no background connections, no component updates) and give each run a fresh profile.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import puppeteer from 'puppeteer-core';

function args(argv) {
  const o = { base: null, cases: null, screenshot: null, timeout: 120000 };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--base') o.base = argv[++i];
    else if (argv[i] === '--cases') o.cases = argv[++i];
    else if (argv[i] === '--screenshot') o.screenshot = argv[++i];
    else if (argv[i] === '--timeout') o.timeout = Number(argv[++i]) * 1000;
  }
  if (!o.base || !o.cases) throw new Error('usage: node browser.mjs --base URL --cases FILE [--screenshot PNG]');
  return o;
}

const PARAMS = ['max_new_tokens', 'temperature', 'seed', 'top_k', 'top_p', 'repeat_penalty'];

async function main() {
  const o = args(process.argv.slice(2));
  const cases = JSON.parse(readFileSync(o.cases, 'utf8'));
  const profile = mkdtempSync(join(tmpdir(), 'edgekit-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: process.env.EDGEKIT_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    userDataDir: profile,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  const out = [];
  try {
    for (const [i, c] of cases.entries()) {
      const url = new URL(o.base);
      url.searchParams.set('prompt', c.prompt);
      for (const k of PARAMS) if (c.options[k] !== undefined && c.options[k] !== null) url.searchParams.set(k, String(c.options[k]));
      const page = await browser.newPage();
      await page.setViewport({ width: 1000, height: 720 });
      const errors = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(url.href);
      try {
        await page.waitForFunction(() => document.title === 'done' || document.title === 'error', { timeout: o.timeout });
      } catch (e) {
        const shown = await page.evaluate(() => `${document.getElementById('card').textContent} | ${document.getElementById('status').textContent}`);
        throw new Error(`case ${i} (${JSON.stringify(c.prompt.slice(0, 30))}): ${e.message}; page: ${shown}; errors: ${errors.join('; ')}`);
      }
      const result = JSON.parse(await page.$eval('#result', (e) => e.textContent));
      if (errors.length) result.page_errors = errors;
      out.push(result);
      if (o.screenshot && i === cases.length - 1) await page.screenshot({ path: o.screenshot });
      await page.close();
    }
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => { process.stderr.write(`edgekit: error: ${e.message}\n`); process.exit(1); });
