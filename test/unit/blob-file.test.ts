import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlobFile } from '../../src/bundle/blob-file.ts';

describe('BlobFile', function () {
  let dir: string;
  beforeEach(function () {
    dir = mkdtempSync(join(tmpdir(), 'tiu-blobfile-'));
  });
  afterEach(function () {
    rmSync(dir, { recursive: true, force: true });
  });

  it('closing quietly after close leaves alone the file that took its descriptor number', function () {
    const blob = new BlobFile(join(dir, 'blob'));
    blob.write(Buffer.from('abc'));
    assert.match(blob.close(), /^sha256:[0-9a-f]{64}$/);
    const other = openSync(join(dir, 'other'), 'w');
    assert.equal(other, blob.fd, 'the kernel hands out the lowest free number again');
    blob.closeQuietly();
    writeSync(other, 'still open');
    closeSync(other);
    assert.equal(readFileSync(join(dir, 'other'), 'utf8'), 'still open');
  });
});
