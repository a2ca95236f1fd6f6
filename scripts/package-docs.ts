/**
 * Writes the package's man pages (tiu.8, tiu.conf.5, tiu-health.8) and bash completion (tiu.bash)
 * into OUTDIR, from the command table and the doc comments of REPO (see scripts/lib/package-docs.ts).
 *
 *   node scripts/package-docs.ts REPO OUTDIR
 *
 * scripts/bundle.sh runs it bundled, so that any Node.js tiu supports can run it.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { commands } from '../src/cli/commands/index.ts';
import { helpOf, optionsOf } from '../src/cli/main.ts';
import { ERROR_CODES } from '../src/error-codes.ts';
import {
  bashCompletion,
  commandDoc,
  confPage,
  exitStatusSection,
  healthPage,
  leadingDocComment,
  renderManPage,
  tiuPage,
  unitComment,
} from './lib/package-docs.ts';

const [repo, out] = process.argv.slice(2);
if (!repo || !out) {
  process.stderr.write('usage: package-docs REPO OUTDIR\n');
  process.exit(2);
}
const pkg = JSON.parse(await readFile(join(repo, 'package.json'), 'utf8')) as { version: string };
const docs = await Promise.all(
  commands.map(async (e) => {
    const c = await e.load();
    return commandDoc(c, optionsOf(c), helpOf(c));
  }),
);
const health = docs.find((d) => d.name === 'health');
if (!health) throw new Error('no health command in the command table');
const configDoc = leadingDocComment(await readFile(join(repo, 'src/deploy/config.ts'), 'utf8'));
const unitDoc = unitComment(await readFile(join(repo, 'systemd/tiu-health.service'), 'utf8'));

await mkdir(out, { recursive: true });
for (const page of [tiuPage(docs, exitStatusSection(ERROR_CODES)), confPage(configDoc), healthPage(health, unitDoc)]) {
  await writeFile(join(out, `${page.name}.${page.section}`), renderManPage(page, pkg.version));
}
await writeFile(join(out, 'tiu.bash'), bashCompletion(docs));
