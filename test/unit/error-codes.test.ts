import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { describeError } from '../../src/cli/main.ts';
import { CopyError } from '../../src/copy/copy.ts';
import { ERROR_CODES, exitStatusOf } from '../../src/error-codes.ts';
import { TiuError, isDiskFullError, isTransientError, type ErrorCode } from '../../src/errors.ts';
import { CommandFailedError } from '../../src/host/exec.ts';
import { ERRORS_DOC, renderErrorsDoc } from '../../scripts/errors-doc.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const REGISTRY_FILE = 'src/error-codes.ts';

async function sources(): Promise<{ path: string; text: string }[]> {
  const out: { path: string; text: string }[] = [];
  const entries = await readdir(join(ROOT, 'src'), { recursive: true, withFileTypes: true });
  for (const e of entries) {
    if (!e.isFile() || !e.name.endsWith('.ts')) continue;
    const full = join(e.parentPath, e.name);
    out.push({ path: relative(ROOT, full), text: await readFile(full, 'utf8') });
  }
  return out;
}

/** The text of the call's argument list from `open` (just after its `(`) to its `)`, strings skipped. */
function argumentsAt(text: string, open: number): string[] {
  const args: string[] = [];
  let depth = 0;
  let start = open;
  for (let i = open; i < text.length; i++) {
    const c = text[i]!;
    if (c === "'" || c === '"' || c === '`') {
      for (i++; i < text.length && text[i] !== c; i++) if (text[i] === '\\') i++;
      continue;
    }
    if (c === '(' || c === '[' || c === '{') depth++;
    else if (c === ')' || c === ']' || c === '}') {
      if (depth === 0) {
        args.push(text.slice(start, i));
        return args;
      }
      depth--;
    } else if (c === ',' && depth === 0) {
      args.push(text.slice(start, i));
      start = i + 1;
    }
  }
  return args;
}

const LITERAL = /'([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)'/g;
/** Node's own codes (errno, ERR_*) are compared with, never raised as a tiu code. */
const NODE_CODE = /^(E[A-Z]+|ERR_[A-Z0-9_]+|ABORT_ERR)$/;

/**
 * Code literals in src/: the code argument of error constructors (`new XError(`, `super(`, a
 * `fail(` helper; any literal in it, so `a ? 'X' : 'Y'` counts), the code of `isTiuError(e, 'X')`,
 * and `code: 'X'`, `code === 'X'`, `causeCode: 'X'`.
 */
function codeLiterals(text: string): string[] {
  const found: string[] = [];
  for (const m of text.matchAll(/\b(?:new\s+[A-Z]\w*Error|super|fail|isTiuError)\s*\(/g)) {
    const args = argumentsAt(text, m.index + m[0].length);
    const codeArg = m[0].startsWith('isTiuError') ? args[1] : args[0];
    for (const l of (codeArg ?? '').matchAll(LITERAL)) found.push(l[1]!);
  }
  for (const m of text.matchAll(/\b(?:code|causeCode)\s*(?::|===|!==)\s*'([A-Z][A-Z0-9_]*)'/g)) found.push(m[1]!);
  return found.filter((c) => !NODE_CODE.test(c));
}

describe('error codes', () => {
  it('docs/errors.md is what scripts/errors-doc.ts generates from the registry', async () => {
    const doc = await readFile(ERRORS_DOC, 'utf8');
    assert.equal(doc, renderErrorsDoc(), 'run: node scripts/errors-doc.ts');
    for (const code of Object.keys(ERROR_CODES)) assert.ok(doc.includes(`| \`${code}\` |`), code);
  });

  it('every code raised or matched in src/ is registered', async () => {
    const unregistered: string[] = [];
    let seen = 0;
    for (const f of await sources()) {
      if (f.path === REGISTRY_FILE) continue;
      for (const c of codeLiterals(f.text)) {
        seen++;
        if (!Object.hasOwn(ERROR_CODES, c)) unregistered.push(`${f.path}: ${c}`);
      }
    }
    // the scan finds the codes (a scan that finds nothing would pass vacuously)
    assert.ok(seen > 200, `only ${seen} code literals found in src/`);
    assert.deepEqual(unregistered, []);
  });

  it('the scan sees codes in constructors, ternaries, subclasses and comparisons', () => {
    const sample = [
      "super(status === 429 ? 'A_ONE' : 'A_TWO', 'm');",
      "throw new BootError('B_ONE', `x ${f('NOT_A_CODE')}`);",
      "if (isTiuError(e, 'C_ONE')) return;",
      "return e.code === 'D_ONE' || e.code === 'ENOENT';",
      "fail('E_ONE', 'why')",
      "other('F_NOT', 'x')",
    ].join('\n');
    assert.deepEqual(codeLiterals(sample).sort(), ['A_ONE', 'A_TWO', 'B_ONE', 'C_ONE', 'D_ONE', 'E_ONE']);
  });

  it('every registered code is used in src/ (no dead codes)', async () => {
    const text = (await sources())
      .filter((f) => f.path !== REGISTRY_FILE)
      .map((f) => f.text)
      .join('\n');
    const dead = Object.keys(ERROR_CODES).filter((c) => !text.includes(`'${c}'`));
    assert.deepEqual(dead, []);
  });

  it('codes are UPPER_SNAKE and every entry says what it means and what to do', () => {
    for (const [code, info] of Object.entries(ERROR_CODES)) {
      assert.match(code, /^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$/);
      assert.ok(info.meaning.length > 10 && !info.meaning.includes('\n'), code);
      assert.ok(info.action.length > 3 && !info.action.includes('\n'), code);
    }
  });

  it('transient is a property of the error, and the helper looks through causes', () => {
    const timeout = new TiuError('REGISTRY_TIMEOUT', 'registry r did not answer');
    assert.equal(timeout.transient, true);
    assert.equal(new TiuError('DIGEST_MISMATCH', 'x').transient, false);
    const wrapped = new CopyError('fetch', 'source', 'docker://r/os', timeout, 'sha256:' + '0'.repeat(64));
    assert.equal(wrapped.code, 'COPY_FAILED');
    assert.equal(wrapped.transient, false, 'COPY_FAILED itself is not transient');
    assert.equal(isTransientError(wrapped), true, 'its cause is');
    assert.equal(
      isTransientError(new TiuError('HOOK_FAILED', 'x', {}, { cause: new TiuError('PATH_UNSAFE', 'y') })),
      false,
    );
    assert.equal(isTransientError(new Error('plain')), false);
    assert.equal(isTransientError(undefined), false);
  });

  it('a full disk is recognised as DISK_FULL, as Node ENOSPC in the chain, and from a program that says so', () => {
    const enospc = Object.assign(new Error('write failed'), { code: 'ENOSPC' });
    assert.equal(isDiskFullError(new TiuError('DELTA_STORE_WRITE_FAILED', 'x', {}, { cause: enospc })), true);
    assert.equal(isTransientError(enospc), true);
    assert.equal(isDiskFullError(new TiuError('DISK_FULL', 'x')), true);
    assert.equal(isDiskFullError(Object.assign(new Error('gone'), { code: 'ENOENT' })), false);
    const btrfs = new CommandFailedError(['btrfs', 'subvolume', 'snapshot'], 1, 'ERROR: No space left on device');
    assert.equal(btrfs.code, 'DISK_FULL');
    assert.equal(new CommandFailedError(['btrfs'], 1, 'ERROR: not a btrfs filesystem').code, 'COMMAND_FAILED');
  });

  it("a wrapper keeps its cause's code visible: causeCode, the CLI line and --json", () => {
    const notFound = new TiuError('CONTENT_NOT_FOUND', 'tag "x" not found in oci:/l');
    const e = new CopyError('resolve', 'source', 'oci:/l', notFound);
    assert.equal(e.causeCode, 'CONTENT_NOT_FOUND');
    const d = describeError(e);
    assert.equal(d.line, `tiu: error: ${e.message} [COPY_FAILED <- CONTENT_NOT_FOUND]`);
    assert.deepEqual(d.json.error.cause, { code: 'CONTENT_NOT_FOUND' });
    assert.equal(d.json.error.code, 'COPY_FAILED');
    assert.equal(d.status, 1);
    // no cause: no arrow, no cause in --json
    const plain = describeError(notFound);
    assert.equal(plain.line, 'tiu: error: tag "x" not found in oci:/l [CONTENT_NOT_FOUND]');
    assert.equal(plain.json.error.cause, undefined);
    // the innermost coded cause, here Node's errno under a TiuError
    const deep = new TiuError(
      'HOOK_FAILED',
      'h',
      {},
      { cause: new TiuError('CHROOT_FAILED', 'c', {}, { cause: Object.assign(new Error('e'), { code: 'EACCES' }) }) },
    );
    assert.equal(deep.causeCode, 'EACCES');
  });

  it('exit statuses: 2 for USAGE, 4 SIGNATURE_EXPIRED, 5 DOWNGRADE, 1 for other errors and for what is not a TiuError', () => {
    assert.equal(exitStatusOf('USAGE'), 2);
    assert.equal(exitStatusOf('SIGNATURE_EXPIRED'), 4);
    assert.equal(describeError(new TiuError('DOWNGRADE', 'older')).status, 5);
    assert.equal(describeError(new TiuError('USAGE', 'bad option')).status, 2);
    assert.equal(exitStatusOf('DISK_FULL'), 1);
    const internal = describeError(new Error('boom'));
    assert.equal(internal.code, 'INTERNAL');
    assert.equal(internal.status, 1);
    const codes = Object.keys(ERROR_CODES) as ErrorCode[];
    assert.deepEqual(
      codes.filter((c) => exitStatusOf(c) !== 1),
      ['USAGE', 'SIGNATURE_EXPIRED', 'DOWNGRADE'],
    );
  });
});
