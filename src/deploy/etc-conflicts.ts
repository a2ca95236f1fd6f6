/** The /etc conflicts of a snapshot as `tiu status` shows them: what the admin has not resolved yet. */
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** `*.tiunew` files under the snapshot's /etc: the conflicts the admin has not resolved yet. */
export async function pendingEtcConflicts(etc: string, limit = 1000): Promise<string[]> {
  const out: string[] = [];
  // An image's `etc -> /elsewhere` is not walked (below it, Dirent types never follow links).
  if (!(await lstat(etc).catch(() => undefined))?.isDirectory()) return out;
  const walk = async (dir: string, rel: string): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      if (out.length >= limit) return;
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(join(dir, e.name), r);
      else if (e.name.endsWith('.tiunew')) out.push(`/etc/${r.slice(0, -'.tiunew'.length)}`);
    }
  };
  await walk(etc, '');
  return out.sort();
}
