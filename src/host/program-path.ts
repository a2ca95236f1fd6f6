/**
 * Paths for the argument lists of programs. An argument is text (UTF-8), but a file name is
 * bytes: a name that is not UTF-8 cannot be spelled in an argument. Such a path is reached
 * through its parent directory, opened here (O_DIRECTORY|O_NOFOLLOW) and named by the
 * descriptor, /proc/<pid>/fd/<n>/<base>: only the base name must then be text, and the walk to
 * the parent was made once, by this process, without following a symlink at its end. A base
 * name that is not text itself is renamed, for the program's run, to a name of tiu's own
 * (`.tiu-tmp-*`, reserved: no image can hold it) and back. Every caller changes a new snapshot,
 * which is not live, so nobody sees the temporary name.
 */
import { closeSync, constants, openSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import { TiuError } from '../errors.ts';

let renames = 0;

const UTF8 = new TextDecoder('utf-8', { fatal: true });

function asText(b: Uint8Array): string | undefined {
  try {
    return UTF8.decode(b);
  } catch {
    return undefined;
  }
}

/** Run `use` with `path` spelled as an argument; the parent's descriptor lives until `use` settles. */
export async function withProgramPath<T>(path: string | Buffer, use: (arg: string) => Promise<T>): Promise<T> {
  if (typeof path === 'string') return use(path);
  const text = asText(path);
  if (text !== undefined) return use(text);
  const slash = path.lastIndexOf(0x2f);
  const base = asText(path.subarray(slash + 1));
  if (slash <= 0 || base === '')
    throw new TiuError(
      'PATH_ENCODING_UNSUPPORTED',
      `${JSON.stringify(path.toString('utf8'))}: a name that is not UTF-8 cannot be given to a program here`,
      { path: path.toString('utf8') },
    );
  const fd = openSync(path.subarray(0, slash), constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  const parent = `/proc/${process.pid}/fd/${fd}`;
  try {
    if (base !== undefined) return await use(`${parent}/${base}`);
    const stand = `.tiu-tmp-name-${process.pid}-${++renames}`;
    const real = Buffer.concat([Buffer.from(`${parent}/`), path.subarray(slash + 1)]);
    await rename(real, `${parent}/${stand}`);
    try {
      return await use(`${parent}/${stand}`);
    } finally {
      await rename(`${parent}/${stand}`, real);
    }
  } finally {
    closeSync(fd);
  }
}
