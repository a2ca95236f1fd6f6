/**
 * SELinux facts for the relabel rule: does the system want labels (the text of its /etc/selinux/config, which the caller reads
 * beneath the snapshot root),
 * and does a tree carry them (the security.selinux xattr).
 */
import { run } from './exec.ts';

/** The text of an /etc/selinux/config says SELINUX=enforcing or permissive. */
export function selinuxConfigWants(text: string): boolean {
  const m = /^\s*SELINUX\s*=\s*(\w+)/m.exec(text);
  return m?.[1] === 'enforcing' || m?.[1] === 'permissive';
}

/** Whether `path` has a security.selinux label (without following a symlink). */
export async function hasSelinuxLabel(path: string): Promise<boolean> {
  const r = await run('getfattr', ['-h', '--absolute-names', '-n', 'security.selinux', '--only-values', path], {
    okExitCodes: [0, 1],
  });
  return r.exitCode === 0 && r.stdout.length > 0;
}
