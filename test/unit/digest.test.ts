import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import { parseDigest, sha256, verifiedStream, verifyBuffer, VerifyingStream } from '../../src/oci/digest.ts';
import { isTiuError } from '../../src/errors.ts';

async function drain(data: Buffer[], v: VerifyingStream): Promise<void> {
  await pipeline(
    Readable.from(data),
    v,
    new Writable({
      write(_c, _e, cb) {
        cb();
      },
    }),
  );
}

describe('digest', () => {
  const data = Buffer.from('hello tiu');
  const desc = { digest: sha256(data), size: data.length };

  it('parses and rejects digests', () => {
    assert.equal(parseDigest(desc.digest).algorithm, 'sha256');
    for (const bad of ['sha256:abc', 'md5:' + 'a'.repeat(32), 'sha256:' + 'A'.repeat(64), 'nocolon']) {
      assert.throws(
        () => parseDigest(bad),
        (e: unknown) => isTiuError(e, 'DIGEST_INVALID'),
      );
    }
  });

  it('verifies a buffer', () => {
    verifyBuffer(desc, data);
    assert.throws(
      () => verifyBuffer(desc, Buffer.from('hello tiU')),
      (e: unknown) => isTiuError(e, 'DIGEST_MISMATCH'),
    );
    assert.throws(
      () => verifyBuffer(desc, Buffer.from('hello')),
      (e: unknown) => isTiuError(e, 'SIZE_MISMATCH'),
    );
  });

  it('verifies a stream: good, altered, short, trailing', async () => {
    await drain([data.subarray(0, 3), data.subarray(3)], new VerifyingStream(desc));
    await assert.rejects(drain([Buffer.from('hello tiU')], new VerifyingStream(desc)), (e: unknown) =>
      isTiuError(e, 'DIGEST_MISMATCH'),
    );
    await assert.rejects(drain([data.subarray(0, 4)], new VerifyingStream(desc)), (e: unknown) =>
      isTiuError(e, 'SIZE_MISMATCH'),
    );
    await assert.rejects(drain([data, Buffer.from('x')], new VerifyingStream(desc)), (e: unknown) =>
      isTiuError(e, 'SIZE_MISMATCH'),
    );
  });

  it('resumes with primed bytes', async () => {
    const v = new VerifyingStream(desc);
    v.prime(data.subarray(0, 5));
    await drain([data.subarray(5)], v);
    assert.equal(v.bytesSeen, data.length);
    // the primed bytes count: wrong ones, or none, are caught
    const wrong = new VerifyingStream(desc);
    wrong.prime(Buffer.from('HELLO'));
    await assert.rejects(drain([data.subarray(5)], wrong), (e: unknown) => isTiuError(e, 'DIGEST_MISMATCH'));
    await assert.rejects(drain([data.subarray(5)], new VerifyingStream(desc)), (e: unknown) =>
      isTiuError(e, 'SIZE_MISMATCH'),
    );
  });

  describe('verifiedStream', () => {
    const data = Buffer.from('hello, verified world');
    const desc = { digest: sha256(data), size: data.length };
    const drain = (s: Readable) => pipeline(s, new Writable({ write: (_c, _e, cb) => cb() }));

    it('hands back a VerifyingStream of the same descriptor as it is (no second hash)', () => {
      const v = Readable.from([data]).pipe(new VerifyingStream(desc));
      assert.equal(verifiedStream(v, desc), v);
      for (const other of [
        { ...desc, size: desc.size + 1 },
        { digest: sha256('other'), size: desc.size },
      ]) {
        const w = verifiedStream(new VerifyingStream(desc), other);
        assert.ok(w instanceof VerifyingStream && w.verifies(other));
        w.destroy();
      }
      v.destroy();
    });

    it('wraps anything else and fails on a wrong digest, a short stream, trailing bytes and source errors', async () => {
      await drain(verifiedStream(Readable.from([data]), desc));
      await assert.rejects(
        drain(verifiedStream(Readable.from([Buffer.from('hello, verified worle')]), desc)),
        (e: unknown) => isTiuError(e, 'DIGEST_MISMATCH'),
      );
      await assert.rejects(drain(verifiedStream(Readable.from([data.subarray(1)]), desc)), (e: unknown) =>
        isTiuError(e, 'SIZE_MISMATCH'),
      );
      await assert.rejects(drain(verifiedStream(Readable.from([data, Buffer.from('!')]), desc)), (e: unknown) =>
        isTiuError(e, 'SIZE_MISMATCH'),
      );
      const broken = new Readable({
        read() {
          this.destroy(new Error('disk gone'));
        },
      });
      await assert.rejects(drain(verifiedStream(broken, desc)), /disk gone/);
    });

    it('releases the source when the verified stream is destroyed', async () => {
      const src = new Readable({ read() {} });
      const v = verifiedStream(src, desc);
      v.destroy();
      await new Promise((r) => setImmediate(r));
      assert.equal(src.destroyed, true);
    });
  });
});
