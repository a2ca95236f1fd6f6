/**
 * Snapshots without snapper (a btrfs root laid out like MicroOS on a system where snapper is
 * not installed or not configured): the same operations as src/host/snapper.ts, done with
 * btrfs-progs, keeping snapper's own bookkeeping — `.snapshots/N/info.xml` with type, number,
 * date, description, cleanup and userdata — so that snapper, installed later, sees the same
 * snapshots and tiu's userdata.
 */
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setReadOnly, subvolumeDelete, subvolumeSnapshot } from '../host/btrfs.ts';
import { SnapperError, formatUserdata, type Snapper, type SnapperSnapshot } from '../host/snapper.ts';
import { bootedSnapshot, defaultSnapshot } from './snapshot-location.ts';

export interface InfoXml {
  type: string;
  num: number;
  date: string;
  description: string;
  cleanup: string;
  userdata: Record<string, string>;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const unesc = (s: string) =>
  s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&amp;/g, '&');

export function formatInfoXml(i: InfoXml): string {
  const lines = [
    '<?xml version="1.0"?>',
    '<snapshot>',
    `  <type>${esc(i.type)}</type>`,
    `  <num>${i.num}</num>`,
    `  <date>${esc(i.date)}</date>`,
  ];
  if (i.description) lines.push(`  <description>${esc(i.description)}</description>`);
  if (i.cleanup) lines.push(`  <cleanup>${esc(i.cleanup)}</cleanup>`);
  for (const [k, v] of Object.entries(i.userdata))
    lines.push('  <userdata>', `    <key>${esc(k)}</key>`, `    <value>${esc(v)}</value>`, '  </userdata>');
  lines.push('</snapshot>', '');
  return lines.join('\n');
}

export function parseInfoXml(text: string): InfoXml {
  const one = (tag: string) => {
    const m = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(text);
    return m ? unesc(m[1]!) : '';
  };
  const num = Number(one('num'));
  if (!Number.isInteger(num) || num < 0) throw new SnapperError(`info.xml has no valid <num>`);
  const userdata: Record<string, string> = {};
  for (const m of text.matchAll(/<userdata>\s*<key>([^<]*)<\/key>\s*<value>([^<]*)<\/value>\s*<\/userdata>/g))
    userdata[unesc(m[1]!)] = unesc(m[2]!);
  return {
    type: one('type') || 'single',
    num,
    date: one('date'),
    description: one('description'),
    cleanup: one('cleanup'),
    userdata,
  };
}

function now(): string {
  return new Date().toISOString().replace('T', ' ').slice(0, 19);
}

/** A Snapper over plain btrfs for the system mounted at `root`. */
export function plainSnapshots(root: string): Snapper {
  const dir = join(root, '.snapshots');
  const info = (n: number) => join(dir, String(n), 'info.xml');
  const read = async (n: number) => parseInfoXml(await readFile(info(n), 'utf8'));
  const write = async (i: InfoXml) => {
    const tmp = `${info(i.num)}.tiu-tmp`;
    await writeFile(tmp, formatInfoXml(i));
    await rename(tmp, info(i.num));
  };
  const numbers = async () =>
    (await readdir(dir))
      .filter((d) => /^\d+$/.test(d))
      .map(Number)
      .sort((a, b) => a - b);
  return {
    root,
    config: 'root',
    async list(): Promise<SnapperSnapshot[]> {
      const [booted, def] = await Promise.all([bootedSnapshot(root), defaultSnapshot(root)]);
      const out: SnapperSnapshot[] = [];
      for (const n of await numbers()) {
        const i = await read(n).catch(() => undefined);
        if (!i) continue;
        out.push({
          number: n,
          type: i.type,
          default: n === def,
          active: n === booted,
          date: i.date,
          description: i.description,
          cleanup: i.cleanup,
          userdata: i.userdata,
        });
      }
      return out;
    },
    async create(o) {
      const n = Math.max(0, ...(await numbers())) + 1;
      formatUserdata(o.userdata ?? {});
      await mkdir(join(dir, String(n)));
      try {
        await subvolumeSnapshot(join(dir, String(o.from), 'snapshot'), join(dir, String(n), 'snapshot'), {
          readOnly: !o.readWrite,
        });
        await write({
          type: 'single',
          num: n,
          date: now(),
          description: o.description,
          cleanup: o.cleanup ?? '',
          userdata: o.userdata ?? {},
        });
      } catch (e) {
        await subvolumeDelete(join(dir, String(n), 'snapshot')).catch(() => undefined);
        await rm(join(dir, String(n)), { recursive: true, force: true });
        throw e;
      }
      return n;
    },
    async modify(n, o) {
      const i = await read(n);
      if (o.description !== undefined) i.description = o.description;
      if (o.cleanup !== undefined) i.cleanup = o.cleanup;
      formatUserdata(o.userdata ?? {});
      for (const [k, v] of Object.entries(o.userdata ?? {})) {
        if (v === '') delete i.userdata[k];
        else i.userdata[k] = v;
      }
      await write(i);
    },
    async delete(n) {
      const snap = join(dir, String(n), 'snapshot');
      await setReadOnly(snap, false).catch(() => undefined);
      await subvolumeDelete(snap);
      await rm(join(dir, String(n)), { recursive: true, force: true });
    },
  };
}
