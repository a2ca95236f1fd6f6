import assert from 'node:assert/strict';
import { bstr } from '../../src/layer/entry.ts';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { zstdCompressSync } from 'node:zlib';
import { isTiuError, TiuError } from '../../src/errors.ts';
import { zstdDecompressBufferSync } from '../../src/layer/zstd-frames.ts';
import { parseConfig } from '../../src/deploy/config.ts';
import { inLayer } from '../../src/deploy/apply/errors.ts';
import { normalizeEntryPath } from '../../src/layer/paths.ts';
import { checkRoom, parseReserve, reserveBytes, SpaceGuard } from '../../src/deploy/apply/space.ts';
import { readTar } from '../../src/layer/tar.ts';
import { HttpClient } from '../../src/transport/registry/http.ts';
import { deadlineMs, speedLimits, SpeedWindow } from '../../src/transport/registry/speed.ts';
import { makeTar } from '../helpers/tarball.ts';

const GiB = 1024 ** 3;

describe('bounded resources and clear refusals (pure parts)', () => {
  it('disk-reserve: percent or size; default the smaller of 5% and 1 GiB', () => {
    assert.deepEqual(parseReserve('5%'), { percent: 5 });
    assert.deepEqual(parseReserve('1G'), { bytes: GiB });
    assert.deepEqual(parseReserve('512MiB'), { bytes: 512 * 1024 * 1024 });
    assert.deepEqual(parseReserve(4096), { bytes: 4096 });
    assert.equal(parseReserve('80%'), undefined);
    assert.equal(parseReserve('lots'), undefined);
    assert.equal(reserveBytes(undefined, 100 * GiB), GiB);
    assert.equal(reserveBytes(undefined, 300 * 1024 * 1024), 15 * 1024 * 1024);
    assert.equal(reserveBytes({ percent: 10 }, 1000), 100);
    assert.equal(reserveBytes({ bytes: 7 }, 1000), 7);
    assert.deepEqual(parseConfig('disk-reserve = "2%"').diskReserve, { percent: 2 });
    assert.equal(parseConfig('').diskReserve, undefined);
    assert.throws(
      () => parseConfig('disk-reserve = "half"'),
      (e) => isTiuError(e, 'CONFIG_INVALID') && /disk-reserve/.test(e.message),
    );
  });

  it('network limits: defaults, tiu.conf, then the environment; the deadline scales with the size', () => {
    assert.deepEqual(speedLimits({}, {}), { minBytesPerSec: 1024, speedTimeMs: 60_000, deadlineFloorMs: 600_000 });
    const conf = parseConfig('min-speed = "4K"\nspeed-time = 30\nrequest-deadline = 120').network!;
    assert.deepEqual(speedLimits(conf, {}), { minBytesPerSec: 4096, speedTimeMs: 30_000, deadlineFloorMs: 120_000 });
    assert.deepEqual(speedLimits(conf, { TIU_MIN_SPEED: '1K', TIU_SPEED_TIME: '2', TIU_REQUEST_DEADLINE: '0' }), {
      minBytesPerSec: 1024,
      speedTimeMs: 2000,
      deadlineFloorMs: 0,
    });
    assert.throws(
      () => speedLimits({}, { TIU_MIN_SPEED: 'fast' }),
      (e) => isTiuError(e, 'USAGE'),
    );
    const l = speedLimits({}, {});
    assert.equal(deadlineMs(l, undefined), 600_000);
    assert.equal(deadlineMs(l, 1024 * 100), 600_000 + 100_000);
    assert.equal(deadlineMs({ ...l, deadlineFloorMs: 0 }, 5), Number.POSITIVE_INFINITY);
  });

  it('the speed window: too slow only over a whole window while tiu waits for the network', () => {
    const l = { minBytesPerSec: 1000, speedTimeMs: 10_000, deadlineFloorMs: 0 };
    const w = new SpeedWindow(l, 0);
    assert.equal(w.sample(5_000, 10, true), undefined); // window not over
    assert.equal(w.sample(10_000, 20, true), 20); // 20 bytes in 10 s
    const fast = new SpeedWindow(l, 0);
    assert.equal(fast.sample(10_000, 50_000, true), undefined);
    assert.equal(fast.sample(20_000, 50_000 + 20_000, true), undefined);
    const behind = new SpeedWindow(l, 0);
    assert.equal(behind.sample(9_000, 0, false), undefined); // the reader is behind: the window restarts
    assert.equal(behind.sample(15_000, 0, true), undefined);
    assert.equal(behind.sample(19_000, 0, true), 0);
  });

  it('a registry that drips ends with REGISTRY_TOO_SLOW naming the registry and the request', async function () {
    this.timeout(20_000);
    const server: Server = createServer((_req, res) => {
      res.writeHead(200, { 'content-length': '1000' });
      const t = setInterval(() => res.write('x'), 400);
      res.on('close', () => clearInterval(t));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    const c = new HttpClient({ speed: { minBytesPerSec: 100, speedTimeMs: 1500, deadlineFloorMs: 0 } });
    const t0 = Date.now();
    try {
      const res = await c.request({
        method: 'GET',
        url: new URL(`http://127.0.0.1:${port}/v2/os/blobs/sha256:abc`),
        what: 'blob sha256:abc in os',
      });
      await assert.rejects(
        (async () => {
          for await (const _ of res.body) void _;
        })(),
        (e) =>
          isTiuError(e, 'REGISTRY_TOO_SLOW') &&
          e.message.includes(`127.0.0.1:${port}`) &&
          e.message.includes('blob sha256:abc in os'),
      );
      assert.ok(Date.now() - t0 < 6000, `took ${Date.now() - t0} ms`);
      // Headers that never come: the deadline.
      const c2 = new HttpClient({ retries: 0, speed: { minBytesPerSec: 0, speedTimeMs: 0, deadlineFloorMs: 800 } });
      const stall = createServer(() => undefined);
      await new Promise<void>((r) => stall.listen(0, '127.0.0.1', r));
      try {
        await assert.rejects(
          c2.request({ method: 'GET', url: new URL(`http://127.0.0.1:${(stall.address() as AddressInfo).port}/v2/`) }),
          (e) => isTiuError(e, 'REGISTRY_TOO_SLOW') && /deadline/.test(e.message),
        );
      } finally {
        stall.closeAllConnections();
        stall.close();
        await c2.close();
      }
    } finally {
      server.closeAllConnections();
      server.close();
      await c.close();
    }
  });

  it('a name component over 255 bytes is ENTRY_INVALID, naming it', () => {
    const long = 'a'.repeat(300);
    assert.throws(
      () => normalizeEntryPath(`usr/${long}`),
      (e) => isTiuError(e, 'ENTRY_INVALID') && e.message.includes('300 bytes'),
    );
    assert.throws(
      () => normalizeEntryPath(`usr/${bstr(Buffer.from('é'.repeat(128)))}`),
      (e) => isTiuError(e, 'ENTRY_INVALID'),
    ); // 256 bytes (names are binary strings: one char per byte)
    assert.equal(normalizeEntryPath(`usr/${'a'.repeat(255)}`), `usr/${'a'.repeat(255)}`);
  });

  it('tar names that are not UTF-8 are read byte-exact: two of them never become one file', async () => {
    const tar = makeTar([{ name: 'usr/x', content: 'a' }]);
    // usr/\xff and usr/\xfe in the header's name field, checksum fixed
    const named = (b: number): Buffer => {
      const t = Buffer.from(tar);
      t[4] = b;
      let sum = 0;
      for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : t[i]!;
      t.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
      return t.subarray(0, 1024);
    };
    const names: string[] = [];
    for await (const t of readTar(Readable.from([named(0xff), named(0xfe), tar]))) names.push(t.name);
    assert.deepEqual(names, ['usr/\xff', 'usr/\xfe', 'usr/x']);
    assert.deepEqual(
      names.map((n) => normalizeEntryPath(n)),
      names,
    );
  });

  it('inLayer names the layer in a refusal of its tar, once', () => {
    const t = inLayer(
      new TiuError('TAR_INVALID', 'invalid tar stream: header checksum mismatch'),
      1,
      'layer 2 (sha256:ab)',
    ) as TiuError;
    assert.equal(t.code, 'LAYER_CORRUPT');
    assert.equal(t.message, 'layer 2 (sha256:ab) is not a valid tar: header checksum mismatch');
    const e = inLayer(new TiuError('ENTRY_INVALID', 'invalid entry "x": y'), 1, 'layer 2 (sha256:ab)') as TiuError;
    assert.equal(e.code, 'ENTRY_INVALID');
    assert.equal(e.message, 'layer 2 (sha256:ab): invalid entry "x": y');
    assert.equal(inLayer(e, 1, 'layer 2 (sha256:ab)'), e);
    const other = new TiuError('DISK_FULL', 'x');
    assert.equal(inLayer(other, 0), other);
  });

  it('in-memory zstd decompression grows with the output, never past the declared size', () => {
    const data = Buffer.alloc(3 << 20, 7);
    const z = zstdCompressSync(data);
    assert.ok(zstdDecompressBufferSync(z, data.length).equals(data));
    assert.throws(
      () => zstdDecompressBufferSync(z, data.length - 1),
      (e) => isTiuError(e, 'ZSTD_OUTPUT_TOO_LARGE'),
    );
    // A small frame "declared" huge: the output is only what the frame holds.
    const small = zstdCompressSync(Buffer.from('hello'));
    const before = process.memoryUsage().arrayBuffers;
    assert.equal(zstdDecompressBufferSync(small, 2 * GiB).toString(), 'hello');
    assert.ok(process.memoryUsage().arrayBuffers - before < 64 << 20);
  });

  it('the space guard: DISK_FULL when the content would not fit above the reserve', async () => {
    await assert.rejects(
      checkRoom(tmpdir(), Number.MAX_SAFE_INTEGER / 2, { bytes: 0 }, 'a test'),
      (e) => isTiuError(e, 'DISK_FULL') && /no space left for a test/.test(e.message),
    );
    await checkRoom(tmpdir(), 0, { bytes: 0 }, 'nothing');
    const g = new SpaceGuard(tmpdir(), { bytes: 0 });
    await g.start(0);
    g.expand(1, 'small');
    assert.throws(
      () => g.expand(Number.MAX_SAFE_INTEGER / 2, '"usr/huge"'),
      (e) => isTiuError(e, 'DISK_FULL') && /usr\/huge/.test(e.message),
    );
    // A reserve larger than anything free.
    const huge = new SpaceGuard(tmpdir(), { bytes: Number.MAX_SAFE_INTEGER }, { every: 1 });
    await assert.rejects(huge.wrote(1), (e) => isTiuError(e, 'DISK_FULL') && /reserve/.test(e.message));
  });
});
