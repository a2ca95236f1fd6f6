/**
 * Packages from the npm registry for the packaging tests: a Node.js of a given version (the
 * oldest tiu supports) and esbuild while it is not yet in node_modules.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../../src/host/exec.ts';

/** Used when node_modules has no esbuild yet (it belongs in devDependencies). */
export const ESBUILD_VERSION = '0.28.2';

/** Unpack the npm registry's tarball of NAME@VERSION into DIR (its `package/` folder becomes DIR). */
export async function npmPackage(name: string, version: string, dir: string, work: string): Promise<void> {
  await mkdir(work, { recursive: true });
  const r = await run('npm', ['pack', `${name}@${version}`, '--pack-destination', work, '--json'], { cwd: work });
  const [{ filename }] = JSON.parse(r.stdout) as [{ filename: string }];
  await mkdir(dir, { recursive: true });
  await run('tar', ['-xzf', join(work, filename), '-C', dir, '--strip-components=1']);
  await rm(join(work, filename));
}

/**
 * A folder whose node_modules/ holds esbuild and its linux-x64 binary: the checkout when it has
 * them, else `work`, where they are unpacked from the registry.
 */
export async function esbuildRoot(repo: string, work: string): Promise<string> {
  if (existsSync(join(repo, 'node_modules/esbuild'))) return repo;
  await npmPackage('esbuild', ESBUILD_VERSION, join(work, 'node_modules/esbuild'), work);
  await npmPackage('@esbuild/linux-x64', ESBUILD_VERSION, join(work, 'node_modules/@esbuild/linux-x64'), work);
  return work;
}
