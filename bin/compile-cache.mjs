// Preloaded by bin/tiu before any of tiu's modules: turns on Node's compile cache so that
// later runs skip type stripping and compiling the ~200 modules a command loads (about 30 MiB
// of RSS and a few hundred ms per process). Loaded with --require, which takes a path; --import
// takes a URL and broke on an install path with "#" or "%". Plain JavaScript on purpose: a .ts
// file here would itself load the TypeScript stripper, which is what the cache avoids.
//
// Where: $TIU_COMPILE_CACHE if set ("off" disables it); else /var/cache/tiu/node-compile for
// root, then $XDG_CACHE_HOME/tiu/node-compile (~/.cache/...). A directory that can't be made
// or written is skipped: tiu then runs without a cache, never fails for want of one; a
// read-only cache that already holds entries is still read. NODE_COMPILE_CACHE set by the
// caller wins (Node enabled it before this file ran).
import { mkdirSync, statSync } from 'node:fs';
import module from 'node:module';
import { join } from 'node:path';
import process from 'node:process';

/**
 * The cache directories to try, best first.
 * @param {NodeJS.ProcessEnv} env
 * @param {number | undefined} uid
 * @returns {string[]}
 */
export function cacheCandidates(env = process.env, uid = process.getuid?.()) {
  const own = env.TIU_COMPILE_CACHE;
  if (own === 'off') return [];
  if (own) return [own];
  const out = [];
  if (uid === 0) out.push('/var/cache/tiu/node-compile');
  const base = env.XDG_CACHE_HOME || (env.HOME ? join(env.HOME, '.cache') : undefined);
  if (base && base.startsWith('/')) out.push(join(base, 'tiu', 'node-compile'));
  return out;
}

/**
 * The directory exists (made here if its parent does, one level at a time: no recursive mkdir).
 * @param {string} dir
 * @param {number} levels how many missing levels may be made
 * @returns {boolean}
 */
function ensureDir(dir, levels) {
  try {
    if (statSync(dir).isDirectory()) return true;
    return false;
  } catch {
    /* absent */
  }
  if (levels <= 0) return false;
  const parent = join(dir, '..');
  if (parent === dir || !ensureDir(parent, levels - 1)) return false;
  try {
    mkdirSync(dir, { mode: 0o755 });
    return true;
  } catch (e) {
    return /** @type {NodeJS.ErrnoException} */ (e).code === 'EEXIST';
  }
}

/**
 * Enable the compile cache in the first usable candidate; returns its directory or undefined.
 * @param {NodeJS.ProcessEnv} env
 * @returns {string | undefined}
 */
export function enableTiuCompileCache(env = process.env) {
  if (env.NODE_COMPILE_CACHE || typeof module.enableCompileCache !== 'function') return undefined;
  for (const dir of cacheCandidates(env)) {
    if (!ensureDir(dir, 2)) continue;
    const r = module.enableCompileCache(dir);
    if (
      r.status === module.constants.compileCacheStatus.ENABLED ||
      r.status === module.constants.compileCacheStatus.ALREADY_ENABLED
    )
      return r.directory ?? dir;
  }
  return undefined;
}

enableTiuCompileCache();
