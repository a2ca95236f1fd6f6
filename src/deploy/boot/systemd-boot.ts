/**
 * systemd-boot integration, the doing part: detection, reading the ESP, staging a snapshot's
 * kernel/initrd and entry, moving the loader default, blessing / marking bad, reconciling the
 * ESP with the snapshots. The decisions are in entries.ts; the writes go through src/host/esp.ts.
 *
 * Callers hold the update lock: nothing else writes tiu's files on the ESP meanwhile.
 */
import { join } from 'node:path';
import { realpath } from 'node:fs/promises';
import { filesystemUuid, subvolumeShow } from '../../host/btrfs.ts';
import {
  copyToEsp,
  efivarsDir,
  espFileSize,
  espSpace,
  ESP_TMP_PREFIX,
  listEsp,
  readEspFile,
  readLoaderVariable,
  removeEsp,
  removeLoaderVariable,
  renameEsp,
  writeEspFile,
} from '../../host/esp.ts';
import { isMountPoint } from '../../host/mount.ts';
import { asError, isTiuError } from '../../errors.ts';
import type { TiuConfig } from '../config.ts';
import { RootedDir } from '../rooted.ts';
import { snapshotPath, type Context } from '../state.ts';
import { healthOf } from '../health.ts';
import {
  BootError,
  DEFAULT_BOOT_TRIES,
  ENTRIES_DIR,
  entryFiles,
  entryName,
  entryOptions,
  entryState,
  entryText,
  espKey,
  KERNEL_DIR,
  kernelRel,
  LOADER_CONF,
  LOADER_DEFAULT,
  loaderConfWith,
  loaderDefaultOf,
  markedName,
  MAX_CMDLINE,
  parseEntryName,
  planReconcile,
  sanitizeCmdline,
  selectedEntry,
  type EntryFile,
  type EntryState,
  type EspEntry,
} from './entries.ts';
import { findKernels, hashHandle } from './kernels.ts';

export interface StagePlan {
  snapshot: number;
  kver: string;
  /** Snapshot-relative source paths, their hashes and where they go. */
  files: { src: string; dest: EntryFile }[];
  name: string;
  text: string;
}

export interface SnapshotEntryStatus {
  name: string;
  state: EntryState;
  parked: boolean;
  triesLeft?: number;
  triesDone?: number;
}

export interface BootStatus {
  integration: 'systemd-boot' | 'none';
  esp?: string;
  loaderDefault?: string;
  /** The EFI variable LoaderEntryDefault (`bootctl set-default`), which overrides loaderDefault. */
  efiEntryDefault?: string;
  /** The entry systemd-boot 252 starts next without a human. */
  selected?: string;
  entries: Record<number, SnapshotEntryStatus>;
}

export interface ReconcileReport {
  removed: string[];
  renamed: { from: string; to: string }[];
  created: number[];
  /** Snapshots left without an entry (no kernel in them, or no room on the ESP). */
  skipped: { snapshot: number; reason: string }[];
  deletedFiles: string[];
}

/** The ESP candidates, inside the system: tiu.conf `esp`, else /boot/efi, else /efi. */
export async function detectBoot(sysroot: string, config: Pick<TiuConfig, 'esp'>): Promise<SystemdBoot | undefined> {
  for (const p of config.esp ? [config.esp] : ['/boot/efi', '/efi']) {
    const abs = await realpath(join(sysroot, p)).catch(() => undefined);
    if (!abs || !(await isMountPoint(abs))) continue;
    const efiDir = (await listEsp(abs, '')).find((f) => f.dir && f.name.toLowerCase() === 'efi');
    const sdDir = efiDir
      ? (await listEsp(abs, efiDir.name)).find((f) => f.dir && f.name.toLowerCase() === 'systemd')
      : undefined;
    const hasSdBoot =
      sdDir !== undefined &&
      (await listEsp(abs, `${efiDir!.name}/${sdDir.name}`)).some(
        (f) => !f.dir && /^systemd-boot.*\.efi$/i.test(f.name),
      );
    const hasLoader = (await listEsp(abs, '')).some((f) => f.dir && f.name.toLowerCase() === 'loader');
    if (hasSdBoot || hasLoader) return new SystemdBoot(abs, efivarsDir(sysroot));
  }
  return undefined;
}

export class SystemdBoot {
  readonly esp: string;
  /** The firmware's EFI variables (efivarfs) of this system; undefined for another sysroot. */
  readonly efivars: string | undefined;
  constructor(esp: string, efivars?: string) {
    this.esp = esp;
    this.efivars = efivars;
  }

  /** LoaderEntryDefault (`bootctl set-default`), which systemd-boot prefers to loader.conf's `default`. */
  async entryDefaultVariable(): Promise<string | undefined> {
    return readLoaderVariable('LoaderEntryDefault', this.efivars);
  }

  /**
   * Before a commit moves the default: a LoaderEntryDefault other than tiu's pattern would keep
   * the loader on the entry it names (or on a non-tiu entry), silently losing the commit, so it
   * is removed (loader.conf's `default tiu-*` then decides). Returns the removed value.
   * EFI_VARIABLE_IMMUTABLE when it cannot be removed: the commit does not happen.
   */
  async clearForeignEntryDefault(): Promise<string | undefined> {
    const v = await this.entryDefaultVariable();
    if (v === undefined || v === LOADER_DEFAULT) return undefined;
    await removeLoaderVariable('LoaderEntryDefault', this.efivars);
    return v;
  }

  async entries(): Promise<EspEntry[]> {
    const out: EspEntry[] = [];
    for (const f of await listEsp(this.esp, ENTRIES_DIR)) {
      const p = parseEntryName(f.name);
      if (!p || f.dir) continue;
      const text = (await readEspFile(this.esp, `${ENTRIES_DIR}/${f.name}`)) ?? '';
      out.push({ ...p, name: f.name, files: entryFiles(text) });
    }
    return out;
  }

  /** Files below tiu/ (and tiu's temporary files in the directories it writes). */
  async files(): Promise<string[]> {
    const out: string[] = [];
    for (const d of await listEsp(this.esp, KERNEL_DIR)) {
      if (!d.dir) {
        out.push(`${KERNEL_DIR}/${d.name}`);
        continue;
      }
      for (const f of await listEsp(this.esp, `${KERNEL_DIR}/${d.name}`)) out.push(`${KERNEL_DIR}/${d.name}/${f.name}`);
    }
    for (const dir of [ENTRIES_DIR, 'loader'])
      for (const f of await listEsp(this.esp, dir)) if (f.name.startsWith(ESP_TMP_PREFIX)) out.push(`${dir}/${f.name}`);
    return out;
  }

  async loaderDefault(): Promise<string | undefined> {
    return loaderDefaultOf(await readEspFile(this.esp, LOADER_CONF));
  }

  /**
   * Plan snapshot n's entry, reading everything it needs and validating it: nothing is written.
   * A kernel or initrd that is a symlink is PATH_UNSAFE, a bad command line CMDLINE_INVALID.
   */
  async prepare(
    ctx: Context,
    n: number,
    config: Pick<TiuConfig, 'kernelCmdline' | 'bootTries'>,
    o: { tries?: boolean } = {},
  ): Promise<StagePlan | undefined> {
    const root = snapshotPath(ctx.sysroot, n);
    const rd = await RootedDir.open(root);
    const kernels = await findKernels(rd);
    const k = kernels.at(-1);
    if (!k) return undefined;
    const files: StagePlan['files'] = [];
    // Bounded before it is read: a file larger than the whole ESP never fits (and a sparse
    // many-GiB "kernel" is not hashed for minutes first).
    const { size: espSize } = await espSpace(this.esp);
    for (const [kind, src] of [
      ['linux', k.kernel],
      ['initrd', k.initrd],
    ] as const) {
      if (!src) continue;
      const fh = await rd.openNoFollow(src, 'file');
      try {
        const st = await fh.stat();
        if (st.size > espSize)
          throw new BootError(
            'ESP_FULL',
            `snapshot ${n}'s /${src} (${st.size} bytes) is larger than the ESP ${this.esp} (${espSize} bytes): nothing was written`,
            { esp: this.esp, snapshot: n, size: st.size },
          );
        const { sha256, size } = await hashHandle(fh);
        files.push({ src, dest: { espRel: kernelRel(k.kver, kind, sha256), sha256, size } });
      } finally {
        await fh.close();
      }
    }
    const cmdlineFile = (await rd.lstat('etc/kernel/cmdline'))
      ? 'etc/kernel/cmdline'
      : (await rd.lstat('usr/lib/kernel/cmdline'))
        ? 'usr/lib/kernel/cmdline'
        : undefined;
    const cmdlineSource = `snapshot ${n}'s /${cmdlineFile}`;
    const cmdlineBytes = cmdlineFile ? await rd.readFile(cmdlineFile, MAX_CMDLINE + 2) : undefined;
    if (cmdlineBytes === null)
      throw new BootError('CMDLINE_INVALID', `${cmdlineSource} is longer than ${MAX_CMDLINE} bytes`, {
        source: cmdlineSource,
      });
    const image = cmdlineBytes ? sanitizeCmdline(cmdlineBytes, cmdlineSource) : [];
    const admin = config.kernelCmdline ? sanitizeCmdline(config.kernelCmdline, "tiu.conf's kernel-cmdline") : [];
    const subvol = (await subvolumeShow(root)).path;
    const options = entryOptions(await filesystemUuid(ctx.sysroot), subvol, image, admin);
    let tries: number | undefined;
    if (o.tries !== false) {
      tries = config.bootTries;
      if (tries === undefined) {
        const t = (await rd.lstat('etc/kernel/tries')) ? await rd.readFile('etc/kernel/tries', 64) : undefined;
        if (t !== undefined) {
          const s = t === null ? '(more than 64 bytes)' : t.toString('utf8').trim();
          if (!/^\d{1,3}$/.test(s) || Number(s) < 1 || Number(s) > 100)
            throw new BootError(
              'BOOT_TRIES_INVALID',
              `snapshot ${n}'s /etc/kernel/tries must be a number from 1 to 100, not '${s.slice(0, 20)}'`,
              { snapshot: n },
            );
          tries = Number(s);
        }
      }
      tries ??= DEFAULT_BOOT_TRIES;
    }
    const [kernel, initrd] = [
      files.find((f) => f.dest.espRel.includes('/linux-'))!.dest,
      files.find((f) => f.dest.espRel.includes('/initrd-'))?.dest,
    ];
    const text = entryText({ snapshot: n, kver: k.kver, kernel, ...(initrd ? { initrd } : {}), options });
    return {
      snapshot: n,
      kver: k.kver,
      files,
      name: entryName({ snapshot: n, parked: true, ...(tries !== undefined ? { triesLeft: tries } : {}) }),
      text,
    };
  }

  /**
   * Make room for `plan` on the ESP: what it needs beyond files already there (whole clusters,
   * plus the entry and a temporary copy's slack) must be free; kernels no entry uses go first;
   * ESP_FULL when it still does not fit. Nothing of the plan is written by this.
   */
  async ensureRoom(plan: StagePlan): Promise<void> {
    const need = async (): Promise<number> => {
      const { cluster } = await espSpace(this.esp);
      const round = (b: number) => Math.ceil(b / cluster) * cluster;
      let bytes = 4 * cluster;
      for (const f of plan.files)
        if ((await espFileSize(this.esp, f.dest.espRel)) !== f.dest.size) bytes += round(f.dest.size) + cluster;
      return bytes;
    };
    if ((await espSpace(this.esp)).free >= (await need())) return;
    const used = new Set((await this.entries()).flatMap((e) => e.files.map(espKey)));
    for (const f of await this.files()) if (!used.has(espKey(f))) await removeEsp(this.esp, f, { pruneParents: 1 });
    const free = (await espSpace(this.esp)).free;
    const needed = await need();
    if (free < needed) {
      throw new BootError(
        'ESP_FULL',
        `the ESP ${this.esp} has ${free} bytes free, snapshot ${plan.snapshot}'s kernel and initrd need ${needed}: nothing was written`,
        { esp: this.esp, free, needed, snapshot: plan.snapshot },
      );
    }
  }

  /** Commit steps 1 and 2: kernel and initrd files (shared by content), then the entry, parked. */
  async stageFiles(ctx: Context, plan: StagePlan): Promise<void> {
    await this.ensureRoom(plan);
    const rd = await RootedDir.open(snapshotPath(ctx.sysroot, plan.snapshot));
    for (const f of plan.files) {
      if ((await espFileSize(this.esp, f.dest.espRel)) === f.dest.size) continue;
      const fh = await rd.openNoFollow(f.src, 'file');
      try {
        await copyToEsp(this.esp, f.dest.espRel, fh, f.dest.sha256);
      } finally {
        await fh.close();
      }
    }
  }

  async stageEntry(plan: StagePlan): Promise<void> {
    for (const e of await this.entries())
      if (e.snapshot === plan.snapshot) await removeEsp(this.esp, `${ENTRIES_DIR}/${e.name}`);
    await writeEspFile(this.esp, `${ENTRIES_DIR}/${plan.name}`, plan.text);
  }

  /** Remove snapshot n's entries and the files no entry uses (a failed update's cleanup). */
  async dropSnapshot(n: number): Promise<void> {
    for (const e of await this.entries()) if (e.snapshot === n) await removeEsp(this.esp, `${ENTRIES_DIR}/${e.name}`);
    const used = new Set((await this.entries()).flatMap((e) => e.files.map(espKey)));
    for (const f of await this.files()) if (!used.has(espKey(f))) await removeEsp(this.esp, f, { pruneParents: 1 });
  }

  /** Bless snapshot n's entry (drop its counter) or mark it bad (`+0-N`). */
  async mark(n: number, mark: 'good' | 'bad'): Promise<string | undefined> {
    const e = (await this.entries()).find((x) => x.snapshot === n);
    if (!e) return undefined;
    const to = markedName(e, mark);
    if (to !== e.name) await renameEsp(this.esp, `${ENTRIES_DIR}/${e.name}`, `${ENTRIES_DIR}/${to}`);
    return to;
  }

  /**
   * Make the ESP agree with the snapshots and the btrfs default: entries of snapshots that are
   * gone are removed, entries newer than the default parked, the default's unparked (this is the
   * commit's last step: the loader default follows), bad snapshots' entries without tries,
   * missing entries created (`create`: the snapshots whose entry must exist, ESP_FULL when it
   * cannot; the others are best effort), kernels no entry uses deleted, loader.conf's default set.
   */
  async reconcile(
    ctx: Context,
    state: { snapshots: { number: number; inProgress: boolean; userdata: Record<string, string> }[]; default?: number },
    config: Pick<TiuConfig, 'kernelCmdline' | 'bootTries'>,
    o: { create?: boolean; required?: number[] } = {},
  ): Promise<ReconcileReport> {
    const report: ReconcileReport = { removed: [], renamed: [], created: [], skipped: [], deletedFiles: [] };
    const snapshots = state.snapshots.map((s) => ({ number: s.number, inProgress: s.inProgress, health: healthOf(s) }));
    const input = async () => ({
      snapshots,
      default: state.default,
      entries: await this.entries(),
      files: await this.files(),
      loaderDefault: await this.loaderDefault(),
      tries: config.bootTries ?? DEFAULT_BOOT_TRIES,
    });
    let plan = planReconcile(await input());
    for (const name of plan.remove) await removeEsp(this.esp, `${ENTRIES_DIR}/${name}`);
    report.removed.push(...plan.remove);
    if (o.create !== false) {
      for (const n of plan.missing) {
        try {
          // Entries made for existing snapshots have no counter: they booted (or were committed) before.
          const p = await this.prepare(ctx, n, config, { tries: false });
          if (!p) {
            report.skipped.push({ snapshot: n, reason: 'no kernel in the snapshot' });
            continue;
          }
          p.name = entryName({ snapshot: n, parked: state.default !== undefined && n > state.default });
          await this.stageFiles(ctx, p);
          await this.stageEntry(p);
          report.created.push(n);
        } catch (e) {
          if (
            o.required?.includes(n) ||
            !(isTiuError(e, 'ESP_FULL') || isTiuError(e, 'PATH_UNSAFE') || isTiuError(e, 'CMDLINE_INVALID'))
          )
            throw e;
          report.skipped.push({ snapshot: n, reason: asError(e).message });
        }
      }
      // New entries change what is renamed and which kernel files are used.
      if (report.created.length) plan = planReconcile(await input());
    }
    for (const r of plan.rename) await renameEsp(this.esp, `${ENTRIES_DIR}/${r.from}`, `${ENTRIES_DIR}/${r.to}`);
    report.renamed.push(...plan.rename);
    if (plan.setLoaderDefault)
      await writeEspFile(this.esp, LOADER_CONF, loaderConfWith(await readEspFile(this.esp, LOADER_CONF)));
    // Renames and loader.conf do not change which files the entries use: the plan's list stands.
    for (const f of plan.unusedFiles) await removeEsp(this.esp, f, { pruneParents: 1 });
    report.deletedFiles.push(...plan.unusedFiles);
    return report;
  }

  async status(): Promise<BootStatus> {
    const entries = await this.entries();
    const loaderDefault = await this.loaderDefault();
    const all = (await listEsp(this.esp, ENTRIES_DIR))
      .filter((f) => !f.dir && /\.conf$/i.test(f.name) && !/^auto-/i.test(f.name))
      .map((f) => f.name);
    const efiDefault = await this.entryDefaultVariable();
    const out: BootStatus = {
      integration: 'systemd-boot',
      esp: this.esp,
      ...(loaderDefault ? { loaderDefault } : {}),
      ...(efiDefault !== undefined ? { efiEntryDefault: efiDefault } : {}),
      entries: {},
    };
    const sel = selectedEntry(all, loaderDefault, efiDefault);
    if (sel) out.selected = sel;
    for (const e of entries) {
      out.entries[e.snapshot] = {
        name: e.name,
        state: entryState(e),
        parked: e.parked,
        ...(e.triesLeft !== undefined ? { triesLeft: e.triesLeft } : {}),
        ...(e.triesDone !== undefined ? { triesDone: e.triesDone } : {}),
      };
    }
    return out;
  }
}
