/** Device nodes and fifos: Node has no mknod, so coreutils' mknod creates them. */
import { run } from './exec.ts';

export async function makeNode(
  path: string,
  kind: 'char' | 'block' | 'fifo',
  mode: number,
  major = 0,
  minor = 0,
): Promise<void> {
  const m = (mode & 0o7777).toString(8);
  if (kind === 'fifo') await run('mknod', ['-m', m, '--', path, 'p']);
  else await run('mknod', ['-m', m, '--', path, kind === 'char' ? 'c' : 'b', String(major), String(minor)]);
}
