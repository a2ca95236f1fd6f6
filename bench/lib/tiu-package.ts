/**
 * Which tiu the bench measures. A device runs the package (packaging/tiu.spec): bin/tiu over
 * scripts/bundle.sh's dist/ (main.js and the chunks it imports on demand), so that is what the
 * bench measures by default, laid out in the bench's work directory from this checkout's code
 * the way the spec installs it. A checkout runs src/ through Node's type stripping and loads
 * ~200 separate modules, which costs a fixed few MiB per process that no device pays:
 * TIU_BENCH_TIU=checkout measures that form instead (results.md says which one ran).
 */
import { copyFile, mkdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { measured, sh } from './proc.ts';

export type TiuForm = 'package' | 'checkout';

export function tiuForm(env = process.env): TiuForm {
  const v = env.TIU_BENCH_TIU ?? 'package';
  if (v !== 'package' && v !== 'checkout') throw new Error(`TIU_BENCH_TIU must be package or checkout, not ${v}`);
  return v;
}

/**
 * Lay out the package under `dir` (bin/tiu, bin/compile-cache.mjs, package.json, dist/) as the
 * spec installs it, on this checkout's Node 24 (the spec's `node` on PATH); returns its bin/tiu.
 */
export async function layOutPackage(repo: string, dir: string): Promise<string> {
  await mkdir(join(dir, 'bin'), { recursive: true });
  await sh('bash', [join(repo, 'scripts/bundle.sh'), dir], {
    env: { TIU_BUNDLE_NODE: join(repo, 'node_modules/.bin/node') },
  });
  for (const f of ['bin/tiu', 'bin/compile-cache.mjs', 'package.json']) await copyFile(join(repo, f), join(dir, f));
  await sh('chmod', ['0755', join(dir, 'bin/tiu')]);
  // bin/tiu prefers ROOT/node_modules/.bin/node: the same Node 24 the checkout runs on.
  await mkdir(join(dir, 'node_modules/.bin'), { recursive: true });
  await symlink(join(repo, 'node_modules/.bin/node'), join(dir, 'node_modules/.bin/node'));
  return join(dir, 'bin/tiu');
}

/** Median peak RSS (bytes) of `tiu --version` over `runs` runs: the fixed cost of one form. */
export async function versionRss(bin: string, runs = 5): Promise<number> {
  const rss: number[] = [];
  for (let i = 0; i < runs; i++) rss.push((await measured(bin, ['--version'])).rss);
  rss.sort((a, b) => a - b);
  return rss[Math.floor(rss.length / 2)]!;
}
