import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import { parseDigest, sha256, verifyBuffer, VerifyingStream } from '../../src/oci/digest.ts';
import { isTiuError } from '../../src/errors.ts';

async function drain(data: Buffer[], v: VerifyingStream): Promise<void> {
  await pipeline(Readable.from(data), v, new Writable({ write(_c, _e, cb) { cb(); } }));
}

describe('digest', () => {
  const data = Buffer.from('hello tiu');
  const desc = { digest: sha256(data), size: data.length };

  it('parses and rejects digests', () => {
    assert.equal(parseDigest(desc.digest).algorithm, 'sha256');
    for (const bad of ['sha256:abc', 'md5:' + 'a'.repeat(32), 'sha256:' + 'A'.repeat(64), 'nocolon']) {
      assert.throws(() => parseDigest(bad), (e: unknown) => isTiuError(e, 'INVALID_DIGEST'));
    }
  });

  it('verifies a buffer', () => {
    verifyBuffer(desc, data);
    assert.throws(() => verifyBuffer(desc, Buffer.from('hello tiU')), (e: unknown) => isTiuError(e, 'DIGEST_MISMATCH'));
    assert.throws(() => verifyBuffer(desc, Buffer.from('hello')), (e: unknown) => isTiuError(e, 'SIZE_MISMATCH'));
  });

  it('verifies a stream: good, altered, short, trailing', async () => {
    await drain([data.subarray(0, 3), data.subarray(3)], new VerifyingStream(desc));
    await assert.rejects(drain([Buffer.from('hello tiU')], new VerifyingStream(desc)), (e: unknown) => isTiuError(e, 'DIGEST_MISMATCH'));
    await assert.rejects(drain([data.subarray(0, 4)], new VerifyingStream(desc)), (e: unknown) => isTiuError(e, 'SIZE_MISMATCH'));
    await assert.rejects(drain([data, Buffer.from('x')], new VerifyingStream(desc)), (e: unknown) => isTiuError(e, 'TRAILING_DATA'));
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
    await assert.rejects(drain([data.subarray(5)], new VerifyingStream(desc)), (e: unknown) => isTiuError(e, 'SIZE_MISMATCH'));
  });
});
