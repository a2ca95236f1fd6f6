/**
 * An OS tree (the fake MicroOS's files) plus everything awkward a layer has to carry, under
 * usr/lib/awkward and usr/share/awkward (two groups, so usually two layers, with a hardlink
 * between them): a name that is not UTF-8 (`caf\xe9`) and a symlink to it, a name with a
 * newline, a 255-byte name component, a binary security.capability (VFS v2, CAP_NET_RAW),
 * hardlinks, a char device, a fifo, relative and absolute symlinks, setuid/setgid/sticky
 * modes, owners nobody has, and mtimes with nanoseconds. Needs root.
 */
import { chmod, chown, link, lutimes, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../../src/host/exec.ts';
import { baseOs, writeTree } from './microos.ts';

/** VFS_CAP_REVISION_2 with the effective bit, permitted CAP_NET_RAW (bit 13). */
export const CAP_NET_RAW_V2 = Buffer.from([1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
export const NON_UTF8_NAME = Buffer.from('caf\xe9', 'latin1');
/** The subtrees (relative to the root) that hold the awkward entries. */
export const AWKWARD_DIRS = ['usr/lib/awkward', 'usr/share/awkward'];

const T = 1_700_000_000;

export async function makeAwkwardTree(root: string): Promise<void> {
  await writeTree(root, await baseOs());
  const lib = join(root, 'usr/lib/awkward');
  const share = join(root, 'usr/share/awkward');
  const bin = (dir: string, name: Buffer) => Buffer.concat([Buffer.from(dir + '/'), name]);
  await mkdir(lib, { recursive: true });
  await mkdir(share, { recursive: true });
  const file = async (p: string | Buffer, content: string, mode = 0o644, uid = 0, gid = 0) => {
    await writeFile(p, content);
    await chown(p, uid, gid);
    await chmod(p, mode);
  };
  await file(bin(share, NON_UTF8_NAME), 'café in latin-1\n');
  await symlink(NON_UTF8_NAME, bin(share, Buffer.from('to-cafe')));
  await file(join(share, 'new\nline'), 'a newline in the name\n');
  await file(join(share, 'n'.repeat(255)), 'a 255-byte name\n');
  await file(join(share, 'owned'), 'owned by nobody known\n', 0o640, 1234, 5678);
  await mkdir(join(share, 'ownerdir'));
  await chown(join(share, 'ownerdir'), 4321, 8765);
  await chmod(join(share, 'ownerdir'), 0o750);
  await file(join(share, 'ownerdir/inside'), 'inside\n', 0o600, 4321, 8765);
  await mkdir(join(share, 'sticky'));
  await chmod(join(share, 'sticky'), 0o1777);
  await file(join(lib, 'pinger'), '\x7fELF pretend ping\n', 0o755);
  // after chown: a chown drops security.capability
  await run('setfattr', [
    '-n',
    'security.capability',
    '-v',
    '0s' + CAP_NET_RAW_V2.toString('base64'),
    join(lib, 'pinger'),
  ]);
  await file(join(lib, 'suid'), 'setuid\n', 0o4755);
  await file(join(lib, 'sgid'), 'setgid\n', 0o2755, 0, 5);
  await file(join(lib, 'hl-a'), 'one inode, three names\n');
  await link(join(lib, 'hl-a'), join(lib, 'hl-c'));
  await link(join(lib, 'hl-a'), join(share, 'hl-b'));
  await run('mknod', [join(lib, 'null'), 'c', '1', '3']);
  await chmod(join(lib, 'null'), 0o666);
  await run('mkfifo', [join(lib, 'fifo')]);
  await chmod(join(lib, 'fifo'), 0o600);
  await symlink('suid', join(lib, 'rel'));
  await symlink('/usr/lib/awkward/suid', join(share, 'abs'));
  // Times last (creating an entry changes its directory's mtime), each with its own nanoseconds.
  const utf8Paths = [
    'usr/share/awkward/to-cafe',
    'usr/share/awkward/new\nline',
    `usr/share/awkward/${'n'.repeat(255)}`,
    'usr/share/awkward/owned',
    'usr/share/awkward/ownerdir/inside',
    'usr/share/awkward/ownerdir',
    'usr/share/awkward/sticky',
    'usr/share/awkward/abs',
    'usr/lib/awkward/pinger',
    'usr/lib/awkward/suid',
    'usr/lib/awkward/sgid',
    'usr/lib/awkward/hl-a',
    'usr/lib/awkward/null',
    'usr/lib/awkward/fifo',
    'usr/lib/awkward/rel',
    'usr/lib/awkward',
    'usr/share/awkward',
  ];
  for (const [i, p] of utf8Paths.entries()) {
    const ns = String(123_456_789 + i * 1_000_003).padStart(9, '0');
    await run('touch', ['-h', '-d', `@${T + i}.${ns}`, join(root, p)]);
  }
  // A name that is not UTF-8 can't go through argv as a JS string: lutimes with a time whose
  // fraction is exact in a double (1/512 s = 1953125 ns).
  await lutimes(bin(share, NON_UTF8_NAME), T + 100 + 1 / 512, T + 100 + 1 / 512);
}
