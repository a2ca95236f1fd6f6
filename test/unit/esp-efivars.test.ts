import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  decodeLoaderVariable,
  efivarsDir,
  LOADER_GUID,
  readLoaderVariable,
  removeLoaderVariable,
} from '../../src/host/esp.ts';
import { encodeLoaderVariable } from '../helpers/efivars.ts';
import { SystemdBoot } from '../../src/deploy/boot/systemd-boot.ts';
import { isTiuError } from '../../src/errors.ts';

describe('host/esp EFI variables (efivarfs bytes; a tmp dir stands in for efivarfs)', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-efivars-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('encodes 4 bytes of attributes (LE) and the UTF-16LE value with its NUL', () => {
    assert.deepEqual(
      [...encodeLoaderVariable('tiu-5.conf')],
      [0x07, 0, 0, 0, ...[...'tiu-5.conf'].flatMap((c) => [c.charCodeAt(0), 0]), 0, 0],
    );
    assert.deepEqual([...encodeLoaderVariable('a', 0x80000007)], [0x07, 0, 0, 0x80, 0x61, 0, 0, 0]);
  });

  it('decodes what bootctl writes, and refuses what is no string variable', () => {
    const raw = Buffer.from([0x07, 0, 0, 0, 0x61, 0, 0x2a, 0, 0, 0]);
    assert.deepEqual(decodeLoaderVariable(raw), { attributes: 7, value: 'a*' });
    assert.deepEqual(
      decodeLoaderVariable(Buffer.from([6, 0, 0, 0, 0x41, 0x04])),
      { attributes: 6, value: '\u0441' },
      'UTF-16LE, not bytes',
    );
    assert.deepEqual(
      decodeLoaderVariable(Buffer.from([7, 0, 0, 0, 0x62, 0])),
      { attributes: 7, value: 'b' },
      'no NUL: the whole value',
    );
    assert.equal(decodeLoaderVariable(Buffer.from([7, 0, 0])), undefined, 'shorter than the attributes');
    assert.equal(decodeLoaderVariable(Buffer.from([7, 0, 0, 0, 0x61])), undefined, 'odd value length');
    assert.equal(decodeLoaderVariable(Buffer.alloc(4 + 8192)), undefined, 'too large');
    assert.equal(decodeLoaderVariable(encodeLoaderVariable('tiu-*'))!.value, 'tiu-*');
  });

  it('reads and removes a variable in an injected directory; other sysroots have none', async () => {
    const path = join(dir, `LoaderEntryDefault-${LOADER_GUID}`);
    await writeFile(path, encodeLoaderVariable('tiu-1.conf'));
    assert.equal(await readLoaderVariable('LoaderEntryDefault', dir), 'tiu-1.conf');
    assert.equal(await readLoaderVariable('LoaderEntryOneShot', dir), undefined);
    assert.equal(await removeLoaderVariable('LoaderEntryDefault', dir), true);
    assert.ok(!existsSync(path));
    assert.equal(await removeLoaderVariable('LoaderEntryDefault', dir), false);
    await assert.rejects(readLoaderVariable('../x', dir), (e) => isTiuError(e, 'PATH_UNSAFE'));
    const saved = process.env.TIU_TEST_EFIVARS;
    delete process.env.TIU_TEST_EFIVARS;
    try {
      assert.equal(efivarsDir('/'), '/sys/firmware/efi/efivars');
      assert.equal(efivarsDir('/mnt/other'), undefined, "another sysroot's firmware is not this machine's");
    } finally {
      if (saved !== undefined) process.env.TIU_TEST_EFIVARS = saved;
    }
  });

  it("the commit removes a LoaderEntryDefault other than tiu's pattern, and keeps `tiu-*`", async () => {
    const path = join(dir, `LoaderEntryDefault-${LOADER_GUID}`);
    const sd = new SystemdBoot(dir, dir);
    await writeFile(path, encodeLoaderVariable('tiu-*'));
    assert.equal(await sd.clearForeignEntryDefault(), undefined);
    assert.ok(existsSync(path));
    await writeFile(path, encodeLoaderVariable('tiu-1.conf'));
    assert.equal(await sd.clearForeignEntryDefault(), 'tiu-1.conf');
    assert.ok(!existsSync(path));
    assert.equal(
      await new SystemdBoot(dir, undefined).clearForeignEntryDefault(),
      undefined,
      'no EFI variables: nothing to do',
    );
  });
});
