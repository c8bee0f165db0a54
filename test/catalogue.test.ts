// The README's error table and src/errors.ts must say the same thing.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { CATALOGUE, DeployError, EXIT } from '../src/errors';

const readme = fs.readFileSync(path.join(__dirname, '..', '..', 'README.md'), 'utf8');

test('every catalogue entry is in the README with its exit code, and nothing else is', () => {
  const rows = new Map<string, number>();
  for (const m of readme.matchAll(/^\| `(RD_ERR_[A-Z_]+)` \| (\d) \|/gm)) rows.set(m[1]!, Number(m[2]));
  for (const [code, entry] of Object.entries(CATALOGUE)) {
    assert.equal(rows.get(code), entry.exit, `README row for ${code}`);
  }
  assert.deepEqual([...rows.keys()].sort(), Object.keys(CATALOGUE).sort());
});

test('every exit code is documented, and DeployError carries code and exit code', () => {
  for (const code of Object.values(EXIT)) assert.match(readme, new RegExp(`^\\| ${code} \\| `, 'm'));
  for (const code of Object.keys(CATALOGUE) as (keyof typeof CATALOGUE)[]) {
    const e = new DeployError(code, 'x', { cause: new Error('under') });
    assert.equal(e.code, code);
    assert.equal(e.exitCode, CATALOGUE[code].exit);
    assert.equal((e.cause as Error).message, 'under');
  }
});
