/**
 * The tree rules of DESIGN.md §4, as a pure function from the source tree to the bundle tree:
 *
 * - left out: runtime and MicroOS subvolume contents (the directories themselves stay, so the
 *   mount points exist): /run /tmp /proc /sys /dev /.snapshots /home /root /opt /srv
 *   /usr/local /boot/writable /boot/grub2/<arch>; and every `--exclude PATH` (with the path).
 * - /var: its content moves to /usr/share/factory/var and a tmpfiles.d line per top entry
 *   (`C` for files and directories, `L` for symlinks) recreates it on a /var that lacks it.
 * - /etc: also kept as /usr/lib/tiu/etc, the pristine base of the next three-way merge.
 * - every parent directory exists as an entry; hardlink groups are led by their smallest path.
 * Hardlink entries carry their inode's size and content reference as well (never written for
 * them; only the leader's content is).
 */
import { BuildError, treePath } from './errors.ts';
import { bbuf, contentFile, mtimeParts, showPath, type TreeEntry } from '../layer/entry.ts';
import { ancestorsOf, compareBytes, isAtOrBelow } from '../layer/paths.ts';
import { DEVICE_DATA } from './os-layout.ts';

/** Directories whose contents never go into a bundle. */
export const EXCLUDED_CONTENTS = ['run', 'tmp', 'proc', 'sys', 'dev', ...DEVICE_DATA] as const;
/** GRUB's per-platform module directories (a subvolume on MicroOS): boot/grub2/<arch>-<platform>. */
const GRUB_ARCH =
  /^boot\/grub2\/(?:i386|x86_64|arm64|arm|aarch64|powerpc|s390x|riscv32|riscv64|loongarch64|mips|mipsel|ia64|sparc64)-[a-z0-9]+$/;

export const FACTORY_VAR = 'usr/share/factory/var';
export const PRISTINE_ETC = 'usr/lib/tiu/etc';
export const TMPFILES_CONF = 'usr/lib/tmpfiles.d/tiu-factory-var.conf';

export interface RuleOptions {
  /** Extra paths (with or without a leading '/') to leave out, with everything below them. */
  exclude?: string[];
  /**
   * mtime for parent directories the source lacks. What tiu adds for /var and /etc takes the
   * mtime of the source's /var or /etc instead, so it changes only when they do (an mtime
   * from the build time or the newest file would change many layers on every build).
   */
  mtime: number;
}

/** Should the source reader skip descending into this directory? (Pure; same rules as below.) */
export function contentsExcluded(path: string, exclude: string[] = []): boolean {
  return EXCLUDED_CONTENTS.some((d) => path === d) || GRUB_ARCH.test(path) || exclude.some((x) => isAtOrBelow(path, x));
}

function isExcluded(path: string, excludes: string[]): boolean {
  if (excludes.some((x) => isAtOrBelow(path, x))) return true;
  for (const d of EXCLUDED_CONTENTS) if (path.startsWith(d + '/')) return true;
  const parts = path.split('/');
  if (parts.length >= 3 && GRUB_ARCH.test(parts.slice(0, 3).join('/')) && parts.length > 3) return true;
  return false;
}

/** tmpfiles.d(5) paths are C-escaped: bytes outside printable ASCII, space and '\' as \xNN. */
function tmpfilesPath(p: string): string {
  let out = '';
  for (const b of bbuf(p))
    out += b > 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
  return out;
}

/** Before an entry moves to another path: content named by the tree path is pinned to the file. */
function pinned(e: TreeEntry): TreeEntry['content'] {
  return e.content && 'root' in e.content ? contentFile(e) : e.content;
}

/** Whole seconds since the epoch as an entry's mtimeNs. */
function secondsNs(sec: number): bigint {
  return BigInt(sec) * 1_000_000_000n;
}

function dirEntry(path: string, mtime: number): TreeEntry {
  return { path, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: secondsNs(mtime), size: 0, xattrs: {} };
}

export function normalizeExcludes(exclude: string[] = []): string[] {
  return exclude.map((x) => {
    const p = treePath(x, `--exclude ${x}`, true);
    if (p === '')
      throw new BuildError('BUILD_OPTION_INVALID', `--exclude ${JSON.stringify(x)} would leave out the whole tree`);
    return p;
  });
}

/** Apply the rules. The input may be in any order; the output is sorted by path. */
export function applyTreeRules(input: Iterable<TreeEntry>, opts: RuleOptions): TreeEntry[] {
  const excludes = normalizeExcludes(opts.exclude);
  const byPath = new Map<string, TreeEntry>();
  for (const e of input) {
    if (isExcluded(e.path, excludes)) continue;
    byPath.set(e.path, e);
  }

  // Whole seconds of the source's /var and /etc: what tiu adds there has no sub-second time.
  const secondsOf = (e: TreeEntry | undefined) => (e ? mtimeParts(e.mtimeNs).sec : opts.mtime);
  const varMtime = secondsOf(byPath.get('var'));
  const etcMtime = secondsOf(byPath.get('etc'));
  const synthMtime = (p: string) =>
    isAtOrBelow(p, 'usr/lib/tiu')
      ? etcMtime
      : isAtOrBelow(p, 'usr/share/factory') || isAtOrBelow(p, 'usr/lib/tmpfiles.d')
        ? varMtime
        : opts.mtime;

  // /var -> /usr/share/factory/var, with one tmpfiles.d line per top entry.
  const varTop: TreeEntry[] = [];
  const moved = new Map<string, string>();
  // The paths to move, not a copy of the whole map: what is allocated while the tree is in
  // memory is kept by V8 for the rest of the build (planLayers).
  for (const p of [...byPath.keys()].filter((k) => k.startsWith('var/'))) {
    const e = byPath.get(p)!;
    const np = `${FACTORY_VAR}/${p.slice(4)}`;
    if (byPath.has(np))
      throw new BuildError(
        'BUILD_SOURCE_UNSUPPORTED',
        `/${showPath(p)} and /${showPath(np)} both exist; tiu moves /var content there`,
      );
    byPath.delete(p);
    moved.set(p, np);
    const ne = { ...e, path: np, content: pinned(e) };
    byPath.set(np, ne);
    if (!p.slice(4).includes('/')) varTop.push(ne);
  }
  for (const e of byPath.values()) {
    if (e.type === 'hardlink' && e.linkname !== undefined && moved.has(e.linkname)) e.linkname = moved.get(e.linkname);
  }
  if (varTop.length > 0) {
    varTop.sort((a, b) => compareBytes(a.path, b.path));
    const lines = ['# Created by tiu build: /var content shipped in the image, copied where /var lacks it.'];
    for (const e of varTop) {
      const rel = e.path.slice(FACTORY_VAR.length + 1);
      if (e.type === 'symlink') lines.push(`L /var/${tmpfilesPath(rel)} - - - - ${tmpfilesPath(e.linkname ?? '')}`);
      else lines.push(`C /var/${tmpfilesPath(rel)} - - - - /${FACTORY_VAR}/${tmpfilesPath(rel)}`);
    }
    const data = Buffer.from(lines.join('\n') + '\n', 'latin1');
    byPath.set(TMPFILES_CONF, {
      path: TMPFILES_CONF,
      type: 'reg',
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtimeNs: secondsNs(varMtime),
      size: data.length,
      xattrs: {},
      content: { data },
    });
  }

  // /etc is kept twice.
  if (byPath.get('etc')?.type === 'dir') {
    for (const p of [...byPath.keys()].filter((k) => isAtOrBelow(k, 'etc'))) {
      const e = byPath.get(p)!;
      const np = `${PRISTINE_ETC}${p.slice(3)}`;
      const copy = { ...e, path: np, content: pinned(e) };
      if (e.type === 'hardlink' && e.linkname !== undefined && isAtOrBelow(e.linkname, 'etc'))
        copy.linkname = `${PRISTINE_ETC}${e.linkname.slice(3)}`;
      byPath.set(np, copy);
    }
  }

  // Every parent exists and is a directory.
  for (const p of [...byPath.keys()]) {
    for (const a of ancestorsOf(p)) {
      const pe = byPath.get(a);
      if (!pe) byPath.set(a, dirEntry(a, synthMtime(a)));
      else if (pe.type !== 'dir')
        throw new BuildError(
          'BUILD_SOURCE_UNSUPPORTED',
          `/${showPath(p)} is inside /${showPath(a)}, which is not a directory`,
        );
    }
  }

  normalizeHardlinks(byPath);
  return [...byPath.values()].sort((a, b) => compareBytes(a.path, b.path));
}

/**
 * Hardlink groups: the smallest path carries the content (so it comes first in any sorted
 * tar), the others link to it. A link whose target is gone (excluded) takes its place.
 */
export function normalizeHardlinks(byPath: Map<string, TreeEntry>): void {
  const groups = new Map<string, string[]>();
  for (const e of byPath.values()) {
    if (e.type !== 'hardlink') continue;
    const t = e.linkname ?? '';
    const g = groups.get(t);
    if (g) g.push(e.path);
    else groups.set(t, [e.path]);
  }
  for (const [target, links] of groups) {
    const te = byPath.get(target);
    if (te && te.type !== 'reg')
      throw new BuildError(
        'BUILD_SOURCE_UNSUPPORTED',
        `hardlink /${showPath(links[0]!)} points at /${showPath(target)}, which is not a regular file`,
      );
    // Hardlink entries carry their inode's content too, so a link whose target was left out
    // can take its place.
    const source = te ?? byPath.get(links.sort(compareBytes)[0]!)!;
    const all = (te ? [target, ...links] : links).sort(compareBytes);
    const leader = all[0]!;
    for (const p of all) {
      const cur = byPath.get(p)!;
      if (p === leader) byPath.set(p, { ...source, path: p, type: 'reg', linkname: undefined });
      else byPath.set(p, { ...cur, type: 'hardlink', linkname: leader, size: source.size, content: source.content });
    }
  }
}
