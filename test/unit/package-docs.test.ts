/**
 * scripts/lib/package-docs.ts: roff that man cannot misread, every command of the table in tiu(8)
 * and in the completion, doc comments taken as written.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { commands } from '../../src/cli/commands/index.ts';
import { helpOf, optionsOf } from '../../src/cli/main.ts';
import {
  bashCompletion,
  commandDoc,
  leadingDocComment,
  renderManPage,
  roffText,
  tiuPage,
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

  it('tiu(8) has a subsection for every command, with its usage and options', async () => {
    const docs = await allDocs();
    const page = renderManPage(tiuPage(docs), '9.9.9');
    assert.match(page, /^\.TH TIU 8 "" "tiu 9\.9\.9"/m);
    for (const c of commands) assert.ok(page.includes(`.SS "tiu ${c.name}"`), c.name);
    assert.ok(page.includes('\\-\\-sysroot VALUE'));
    // No line of the help text turned into a request: every line starting with '.' is ours.
    const requests = page.split('\n').filter((l) => l.startsWith('.'));
    for (const r of requests) assert.match(r, /^\.(\\"|TH|SH|SS|PP|nf|fi)( |$)/, r);
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
