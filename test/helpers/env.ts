/**
 * Test gating. Tests that need root, loop devices or a registry run in CI, always: where the
 * environment can't give them what they need, CI fails instead of skipping. On a developer's
 * machine without root they are skipped with the reason printed.
 */
import type { Context } from 'mocha';

export const isCI = process.env.CI === 'true' || process.env.CI === '1';
export const isRoot = process.getuid?.() === 0;

/** Call at the start of a `before` hook or test (with `function () {}` for `this`). */
export function requireRoot(ctx: Context, why = 'needs root (loop devices, btrfs, mounts)'): void {
  if (isRoot) return;
  if (isCI) throw new Error(`CI must run this test, but it ${why} and runs as uid ${process.getuid?.()}`);
  console.warn(`      skipped: ${why}`);
  ctx.skip();
}
