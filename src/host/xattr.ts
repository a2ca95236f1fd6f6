/**
 * Extended attributes through getfattr/setfattr (package `attr`): Node has no xattr API.
 * Never dereferences symlinks (-h). Whole trees are read with one getfattr run and many files
 * are written with `setfattr --restore` runs of up to RESTORE_BATCH_BYTES of input each, so the
 * cost is a few processes per apply and the input is never held whole (a tree with a label on
 * every file makes megabytes of it).
 *
 * The `--restore` input is a text format (`# file: PATH` headers, `name=value` lines) and the
 * names and values come from images: nothing goes into it without exact escaping. Paths are
 * escaped with quoteName (every byte outside printable ASCII, and the backslash, as `\ooo`),
 * values are base64 (`0s…`), and names cannot be escaped, so every name is validated
 * (./xattr-names.ts: namespace, printable ASCII, no '=', 1..255 bytes) and
 * values are at most 64 KiB; anything else is XATTR_INVALID before it goes into an input.
 */
import { CommandFailedError, run } from './exec.ts';
import { withProgramPath } from './program-path.ts';
import { checkXattrName, checkXattrValue } from './xattr-names.ts';
import { LineSplitter } from '../util/line-splitter.ts';

/** getfattr's escaping of names: the backslash and bytes outside printable ASCII as `\ooo`. */
export function quoteName(path: string | Uint8Array): string {
  let out = '';
  for (const b of typeof path === 'string' ? Buffer.from(path) : path) {
    if (b > 0x20 && b < 0x7f && b !== 0x5c) out += String.fromCharCode(b);
    else out += '\\' + b.toString(8).padStart(3, '0');
  }
  return out;
}

export function unquoteName(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '\\' && s[i + 1] === '\\') {
      bytes.push(0x5c);
      i++;
    } else if (c === '\\' && /^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) {
      bytes.push(parseInt(s.slice(i + 1, i + 4), 8));
      i += 3;
    } else {
      for (const b of Buffer.from(c)) bytes.push(b);
    }
  }
  return Buffer.from(bytes).toString();
}

function decodeValue(v: string): Buffer {
  if (v.startsWith('0s')) return Buffer.from(v.slice(2), 'base64');
  if (v.startsWith('0x')) return Buffer.from(v.slice(2), 'hex');
  if (v.startsWith('"') && v.endsWith('"')) return Buffer.from(unquoteName(v.slice(1, -1)));
  return Buffer.from(v);
}

/** Parse `getfattr -d -e base64 --absolute-names` output: absolute path -> name -> value. */
export function parseGetfattrDump(text: string): Map<string, Record<string, Buffer>> {
  const out = new Map<string, Record<string, Buffer>>();
  let cur: Record<string, Buffer> | null = null;
  for (const line of text.split('\n')) {
    if (line.startsWith('# file: ')) {
      cur = {};
      out.set(unquoteName(line.slice(8)), cur);
    } else if (line !== '' && cur) {
      const eq = line.indexOf('=');
      if (eq < 0) cur[line] = Buffer.alloc(0);
      else cur[line.slice(0, eq)] = decodeValue(line.slice(eq + 1));
    }
  }
  return out;
}

/** All xattrs (every namespace) of every file below `root`, keyed by absolute path; files without any are absent. */
export async function dumpTreeXattrs(root: string): Promise<Map<string, Record<string, Buffer>>> {
  // Exit code 1 with "Operation not supported" happens on filesystems without xattrs: then there are none.
  const r = await run('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', root], {
    okExitCodes: [0, 1],
    timeout: 3_600_000,
  });
  if (r.exitCode === 1 && !/not supported/i.test(r.stderr)) {
    // Some entries could not be read: surface it rather than silently miss labels.
    throw new CommandFailedError(['getfattr', '-R', root], 1, r.stderr.slice(-2000));
  }
  return parseGetfattrDump(r.stdout);
}

/** Xattrs of the given paths (absolute), without following symlinks. */
export async function getXattrs(paths: readonly string[]): Promise<Map<string, Record<string, Buffer>>> {
  const out = new Map<string, Record<string, Buffer>>();
  for (let i = 0; i < paths.length; i += 500) {
    const chunk = paths.slice(i, i + 500);
    const r = await run('getfattr', ['-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', '--', ...chunk], {
      okExitCodes: [0, 1],
    });
    for (const [k, v] of parseGetfattrDump(r.stdout)) out.set(k, v);
  }
  return out;
}

/** Input of one `setfattr --restore` run: past this many bytes (UTF-16 units, all ASCII) a batch is run. */
export const RESTORE_BATCH_BYTES = 1024 * 1024;

export interface XattrSet {
  path: string | Buffer;
  set: Record<string, Buffer>;
}

/**
 * The `--restore` input for `items`, in batches of whole files of about `maxBytes` each (one
 * file's block may carry a batch past it: at most a few 64 KiB values). Every name and value is
 * checked before its block is made.
 */
export function* restoreBatches(items: Iterable<XattrSet>, maxBytes = RESTORE_BATCH_BYTES): Generator<string> {
  let batch = '';
  for (const it of items) {
    const names = Object.keys(it.set);
    if (names.length === 0) continue;
    if (it.path[0] !== '/' && it.path[0] !== 0x2f)
      throw new Error(`setXattrs: ${JSON.stringify(it.path.toString())} is not an absolute path`);
    for (const n of names) {
      checkXattrName(it.path, n);
      checkXattrValue(it.path, n, it.set[n]!);
    }
    batch += `# file: ${quoteName(it.path)}\n`;
    for (const n of names) batch += `${n}=0s${Buffer.from(it.set[n]!).toString('base64')}\n`;
    batch += '\n';
    if (batch.length >= maxBytes) {
      yield batch;
      batch = '';
    }
  }
  if (batch) yield batch;
}

/**
 * Set xattrs on many files (absolute paths, no dereferencing), one setfattr run per batch of
 * restoreBatches. A path is text or the bytes of a name (any bytes: the restore format escapes
 * them). `items` is read as the batches go: a generator over a plan holds nothing per file.
 */
export async function setXattrs(items: Iterable<XattrSet>): Promise<void> {
  for (const input of restoreBatches(items))
    await run('setfattr', ['-h', '--restore=-'], { input, timeout: 3_600_000 });
}

/** Remove one xattr from a file (no dereferencing). `path`: text, or the bytes of a name. */
export async function removeXattr(path: string | Buffer, name: string): Promise<void> {
  // An argument, not a text format; the name is one on disk (any namespace), but of a sane form.
  checkXattrName(path, name, { anyNamespace: true });
  await withProgramPath(path, (p) => run('setfattr', ['-h', '-x', name, '--', p]));
}

/** getfattr's `\ooo` escapes back to raw bytes (names that are not UTF-8 stay exact). */
function unquoteBytes(s: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    const oct = s.subarray(i + 1, i + 4).toString('latin1');
    if (c === 0x5c && s[i + 1] === 0x5c) {
      out.push(0x5c);
      i++;
    } else if (c === 0x5c && /^[0-7]{3}$/.test(oct)) {
      out.push(parseInt(oct, 8));
      i += 3;
    } else {
      out.push(c);
    }
  }
  return Buffer.from(out);
}

/**
 * The longest line a dump can hold: a `# file:` line of a PATH_MAX path with every byte escaped
 * (4 x 4096), or a value of XATTR_SIZE_MAX (64 KiB) in base64, with its name; with room to spare.
 */
const MAX_DUMP_LINE = 256 * 1024;

/**
 * Every xattr under `root` (absolute), keyed by the path relative to root as a *binary*
 * (latin1) string, '' for root itself, so names that are not UTF-8 survive; the bundle builder
 * keys tar names that way. Lists are sorted by attribute name.
 */
export async function readTreeXattrs(
  root: string,
  opts: { signal?: AbortSignal } = {},
): Promise<Map<string, [string, Buffer][]>> {
  const out = new Map<string, [string, Buffer][]>();
  const rootBytes = Buffer.from(root.replace(/\/+$/, ''), 'utf8');
  let current: [string, Buffer][] | undefined;
  // The dump is parsed line by line as getfattr writes it: a tree with a label on every file
  // dumps tens of MiB, which were held whole (and copied) before the first line was read.
  const argv = ['getfattr', '--recursive', '--no-dereference', '--physical', '--dump', '--match=-'];
  const lines = new LineSplitter({
    maxLine: MAX_DUMP_LINE,
    tooLong: (n) => {
      throw new CommandFailedError([...argv, root], undefined, '', `wrote a line of ${n} bytes`);
    },
    onLine: (line) => {
      if (line.length === 0) return;
      if (line.subarray(0, 8).toString('latin1') === '# file: ') {
        const abs = unquoteBytes(line.subarray(8));
        let rel = abs.equals(rootBytes) ? Buffer.alloc(0) : abs.subarray(rootBytes.length + 1);
        while (rel.length && rel[rel.length - 1] === 0x2f) rel = rel.subarray(0, rel.length - 1);
        current = [];
        out.set(rel.toString('latin1'), current);
        return;
      }
      const eq = line.indexOf(0x3d);
      if (!current || eq < 0) return;
      current.push([line.subarray(0, eq).toString('utf8'), decodeValue(line.subarray(eq + 1).toString('latin1'))]);
    },
  });
  await run(argv[0]!, [...argv.slice(1), '--encoding=base64', '--absolute-names', root], {
    onStdout: (chunk) => lines.push(chunk),
    signal: opts.signal,
    timeout: 3_600_000,
  });
  lines.end();
  for (const list of out.values()) list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return out;
}
