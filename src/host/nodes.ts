/** Device nodes and fifos: Node has no mknod, so coreutils' mknod creates them. */
import { run } from './exec.ts';
import { withProgramPath } from './program-path.ts';

/** `path`: text, or the bytes of a name (the apply engine's names need not be UTF-8). */
export async function makeNode(
  path: string | Buffer,
  kind: 'char' | 'block' | 'fifo',
  mode: number,
  major = 0,
  minor = 0,
): Promise<void> {
  const m = (mode & 0o7777).toString(8);
  await withProgramPath(path, async (p) => {
    if (kind === 'fifo') await run('mknod', ['-m', m, '--', p, 'p']);
    else await run('mknod', ['-m', m, '--', p, kind === 'char' ? 'c' : 'b', String(major), String(minor)]);
  });
}
