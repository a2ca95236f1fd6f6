/**
 * Packages from the npm registry for the packaging tests: a Node.js of a given version (the
 * oldest tiu supports).
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../../src/host/exec.ts';

/** Unpack the npm registry's tarball of NAME@VERSION into DIR (its `package/` folder becomes DIR). */
export async function npmPackage(name: string, version: string, dir: string, work: string): Promise<void> {
  await mkdir(work, { recursive: true });
  const r = await run('npm', ['pack', `${name}@${version}`, '--pack-destination', work, '--json'], { cwd: work });
  const [{ filename }] = JSON.parse(r.stdout) as [{ filename: string }];
  await mkdir(dir, { recursive: true });
  await run('tar', ['-xzf', join(work, filename), '-C', dir, '--strip-components=1']);
  await rm(join(work, filename));
}
