import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryTarget } from '../../helpers/memory-target.ts';
import { OciLayoutTarget } from '../../../src/content/oci-layout.ts';
import { copy } from '../../../src/copy/copy.ts';
import { isTiuError } from '../../../src/errors.ts';
import { parseReference } from '../../../src/oci/reference.ts';
import { parsePolicy } from '../../../src/trust/policy.ts';
import { policyVerifier } from '../../helpers/policy.ts';
import { signImage } from '../../../src/trust/sign.ts';
import { signatureTag } from '../../../src/trust/signatures.ts';
import { verifyImageSignatures } from '../../../src/trust/verify.ts';
import { putImage } from '../../helpers/trust-target.ts';

describe('trust: policy inside copy(), signatures travelling with --referrers', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tiu-copy-policy-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const policy = parsePolicy(
    JSON.stringify({
      default: [{ type: 'reject' }],
      transports: {
        docker: {
          'r.example/os': [
            {
              type: 'sigstoreSigned',
              keyData: Buffer.from(publicKey.export({ format: 'pem', type: 'spki' })).toString('base64'),
            },
          ],
        },
      },
    }),
  );
  const ref = parseReference('r.example/os/microos:1');

  it('refuses an unsigned image before any byte reaches the destination', async () => {
    const src = new MemoryTarget('memory:src');
    await putImage(src, '1', 'unsigned');
    const dst = new MemoryTarget('memory:dst');
    await assert.rejects(copy(src, '1', dst, '1', { verify: policyVerifier(policy, ref) }), (e: unknown) =>
      isTiuError(e, 'SIGNATURE_MISSING'),
    );
    assert.equal(dst.size, 0);
    await assert.rejects(
      copy(src, '1', dst, '1', { verify: policyVerifier(policy, parseReference('elsewhere.example/x:1')) }),
      (e: unknown) => isTiuError(e, 'POLICY_REJECTED'),
    );
    assert.equal(dst.size, 0);
  });

  it('copies a signed image to a layout with its .sig tag, where it verifies offline', async () => {
    const src = new MemoryTarget('memory:src');
    const img = await putImage(src, '1', 'signed');
    await signImage(src, img, privateKey, { dockerReference: 'r.example/os/microos:1', bundle: true });
    const dst = await OciLayoutTarget.open(join(dir, 'usb'), { create: true });
    await copy(src, '1', dst, '1', { verify: policyVerifier(policy, ref), referrers: true });
    assert.equal((await dst.resolve(signatureTag(img.digest))).mediaType, 'application/vnd.oci.image.manifest.v1+json');
    const v = await verifyImageSignatures(dst, await dst.resolve('1'), {
      keys: [publicKey],
      identity: { type: 'exactRepository', dockerRepository: 'r.example/os/microos' },
      imageIdentity: undefined,
    });
    assert.deepEqual(v.verified.map((s) => s.kind).sort(), ['bundle', 'simplesigning']);
  });

  it('a signed layout still has one image: `oci:PATH` without a tag resolves to it, not to its .sig manifest', async () => {
    const layout = await OciLayoutTarget.open(join(dir, 'single'), { create: true });
    const img = await putImage(layout, 'v1', 'only image');
    await signImage(layout, img, privateKey, { dockerReference: 'r.example/os/microos:v1' });
    assert.equal((await layout.resolveDefault()).digest, img.digest);
  });
});
