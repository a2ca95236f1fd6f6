/**
 * scripts/lib/package-docs.ts: roff that man cannot misread, every command of the table in tiu(8)
 * and in the completion, doc comments taken as written.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { commands } from '../../src/cli/commands/index.ts';
import { helpOf, optionsOf } from '../../src/cli/main.ts';
import { ERROR_CODES, exitStatusOf, type ErrorCode } from '../../src/error-codes.ts';
import {
  bashCompletion,
  commandDoc,
  exitStatusSection,
  leadingDocComment,
  renderManPage,
  roffText,
  tiuPage,
  undescribedOptions,
  unitComment,
  type CommandDoc,
} from '../../scripts/lib/package-docs.ts';

const allDocs = async (): Promise<CommandDoc[]> =>
  Promise.all(
    commands.map(async (e) => {
      const c = await e.load();
      return commandDoc(c, optionsOf(c), helpOf(c));
    }),
  );

describe('package docs (man pages and completion from the command table)', () => {
  it('roffText escapes backslashes and hyphens and keeps text lines from being requests', () => {
    assert.equal(roffText('a\\b --x'), 'a\\eb \\-\\-x');
    assert.equal(roffText(".SH evil\n'br\nok"), "\\&.SH evil\n\\&'br\nok");
  });

  it('tiu(8) has a subsection for every command, with its usage and every option it takes', async () => {
    const docs = await allDocs();
    const page = renderManPage(tiuPage(docs, exitStatusSection(ERROR_CODES)), '9.9.9');
    assert.match(page, /^\.TH TIU 8 "" "tiu 9\.9\.9"/m);
    for (const c of commands) assert.ok(page.includes(`.SS "tiu ${c.name}"`), c.name);
    for (const d of docs) {
      const section = page.slice(page.indexOf(`.SS "tiu ${d.name}"`)).split('\n.SS ')[0]!;
      for (const flag of Object.keys(d.options))
        assert.ok(section.includes(`\\-\\-${flag.replace(/-/g, '\\-')}`), `${d.name} --${flag}`);
    }
    // No line of the help text turned into a request: every line starting with '.' is ours.
    const requests = page.split('\n').filter((l) => l.startsWith('.'));
    for (const r of requests) assert.match(r, /^\.(\\"|TH|SH|SS|PP|nf|fi)( |$)/, r);
  });

  it('options the help text already describes are not listed again; the others are', () => {
    const doc: CommandDoc = {
      name: 'x',
      summary: 's',
      usage: 'tiu x [--sysroot DIR]',
      help: '  --check-only   only check\n  --check-timeout S   seconds',
      options: {
        sysroot: { type: 'string' },
        'check-only': { type: 'boolean' },
        'check-timeout': { type: 'string' },
        check: { type: 'boolean' },
        creds: { type: 'string', multiple: true },
      },
    };
    assert.deepEqual(undescribedOptions(doc), ['--check', '--creds VALUE (repeatable)']);
  });

  it('EXIT STATUS names every status the error registry gives, with its codes', () => {
    const text = exitStatusSection(ERROR_CODES);
    assert.match(text, /^0 {4}success$/m);
    assert.match(text, /^2 {4}USAGE: /m);
    assert.match(text, /^4 {4}SIGNATURE_EXPIRED: /m);
    assert.match(text, /^5 {4}DOWNGRADE: /m);
    const statuses = new Set((Object.keys(ERROR_CODES) as ErrorCode[]).map(exitStatusOf));
    for (const s of statuses) assert.match(text, new RegExp(`^${s} `, 'm'), `status ${s}`);
    const fake = exitStatusSection({
      B_X: { meaning: 'b', exit: 7 },
      A_X: { meaning: 'a', exit: 7 },
      C: { meaning: 'c' },
    });
    assert.match(fake, /^7 {4}A_X: a\n {5}B_X: b$/m);
    assert.doesNotMatch(fake, /C: c/);
  });

  it('the completion offers every command word and each command its options', async () => {
    const docs = await allDocs();
    const bash = bashCompletion(docs);
    const first = /compgen -W "([^"]*) --help --version"/.exec(bash)?.[1]?.split(' ');
    assert.deepEqual(first, [...new Set(commands.map((c) => c.name.split(' ')[0]))]);
    assert.match(bash, /^ {4}key\) COMPREPLY=\(\$\(compgen -W "generate"/m);
    assert.match(bash, /^ {4}key,generate\) opts="--output-key-prefix --force --json --help" ;;$/m);
    assert.match(bash, /^ {4}update,\*\) opts="[^"]*--check[^"]*" ;;$/m);
  });

  it('the completion refuses a word the shell would read as code', () => {
    const evil: CommandDoc = { name: 'x$(reboot)', summary: '', usage: '', options: {} };
    assert.throws(() => bashCompletion([evil]), /not a completion word/);
  });

  it('doc comments: the first /** */ block of config.ts, the leading # block of a unit', async () => {
    const conf = leadingDocComment(await readFile(new URL('../../src/deploy/config.ts', import.meta.url), 'utf8'));
    assert.match(conf, /^\/etc\/tiu\/tiu\.conf, TOML:\n/);
    assert.match(conf, /^ {2}image = "docker:/m);
    assert.doesNotMatch(conf, /^\s*\*/m);
    assert.equal(unitComment('# one\n#\n# two\n[Unit]\n# not this\n'), 'one\n\ntwo');
    assert.throws(() => leadingDocComment('const x = 1;'), /no doc comment/);
  });
});
