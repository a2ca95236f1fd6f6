import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTiuError } from '../../../src/errors.ts';
import { parseReference, type DockerReference } from '../../../src/oci/reference.ts';
import { identityMismatch, type SignedIdentity } from '../../../src/trust/identity.ts';
import { checkPolicy, loadPolicy, parsePolicy, policyScopes, requirementsFor } from '../../../src/trust/policy.ts';
import { policyVerifier } from '../../helpers/policy.ts';
import { signImage } from '../../../src/trust/sign.ts';
import { putImage, TestTarget } from '../../helpers/trust-target.ts';

const d = (s: string): DockerReference => parseReference(s) as DockerReference;
const digest = `sha256:${'a'.repeat(64)}`;

describe('trust/identity', () => {
  const cases: [SignedIdentity, string, string, boolean][] = [
    [{ type: 'matchExact' }, 'r.example/a/b:1', 'r.example/a/b:1', true],
    [{ type: 'matchExact' }, 'r.example/a/b:1', 'r.example/a/b:2', false],
    [{ type: 'matchExact' }, `r.example/a/b@${digest}`, 'r.example/a/b:1', false],
    [{ type: 'matchRepoDigestOrExact' }, 'r.example/a/b:1', 'r.example/a/b:1', true],
    [{ type: 'matchRepoDigestOrExact' }, 'r.example/a/b:1', 'r.example/a/b', false],
    [{ type: 'matchRepoDigestOrExact' }, `r.example/a/b@${digest}`, 'r.example/a/b:9', true],
    [{ type: 'matchRepoDigestOrExact' }, `r.example/a/b@${digest}`, 'r.example/a/c:9', false],
    [{ type: 'matchRepoDigestOrExact' }, 'r.example/a/b', 'r.example/a/b:latest', true],
    [{ type: 'matchRepository' }, 'r.example/a/b:1', 'r.example/a/b:7', true],
    [{ type: 'matchRepository' }, 'r.example/a/b:1', 'r.example/a/bb:1', false],
    [{ type: 'matchRepository' }, 'busybox:1', 'index.docker.io/library/busybox', true],
    [{ type: 'exactReference', dockerReference: 'up.example/x:1' }, 'r.example/a/b:1', 'up.example/x:1', true],
    [{ type: 'exactReference', dockerReference: 'up.example/x:1' }, 'r.example/a/b:1', 'up.example/x:2', false],
    [{ type: 'exactRepository', dockerRepository: 'up.example/x' }, 'r.example/a/b:1', 'up.example/x:2', true],
    [{ type: 'exactRepository', dockerRepository: 'up.example/x' }, 'r.example/a/b:1', 'up.example/y:2', false],
    [
      { type: 'remapIdentity', prefix: 'mirror:5000/vendor', signedPrefix: 'vendor.example' },
      'mirror:5000/vendor/p/i:1',
      'vendor.example/p/i:1',
      true,
    ],
    [
      { type: 'remapIdentity', prefix: 'mirror:5000/vendor', signedPrefix: 'vendor.example' },
      'mirror:5000/vendor/p/i:1',
      'mirror:5000/vendor/p/i:1',
      false,
    ],
    [
      { type: 'remapIdentity', prefix: 'mirror:5000/vendor', signedPrefix: 'vendor.example' },
      'mirror:5000/vendorx/i:1',
      'mirror:5000/vendorx/i:1',
      true,
    ],
  ];
  for (const [rule, image, signed, ok] of cases) {
    it(`${rule.type}: image ${image}, signed ${signed} -> ${ok ? 'accept' : 'refuse'}`, () => {
      assert.equal(identityMismatch(rule, d(image), signed) === null, ok);
    });
  }
  it('layouts have no identity: only exactReference/exactRepository can decide', () => {
    assert.notEqual(identityMismatch({ type: 'matchRepository' }, undefined, 'r.example/a/b:1'), null);
    assert.equal(
      identityMismatch({ type: 'exactRepository', dockerRepository: 'r.example/a/b' }, undefined, 'r.example/a/b:1'),
      null,
    );
    assert.notEqual(identityMismatch({ type: 'matchRepository' }, d('r.example/a/b:1'), 'NOT A NAME'), null);
  });
});

describe('trust/policy', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tiu-policy-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const policyText = JSON.stringify({
    default: [{ type: 'reject' }],
    transports: {
      docker: {
        'r.example': [{ type: 'insecureAcceptAnything' }],
        'r.example/os': [{ type: 'sigstoreSigned', keyPath: 'os.pub' }],
        'r.example/os/debug:1': [{ type: 'reject' }],
        '*.example.org': [{ type: 'insecureAcceptAnything' }],
      },
      oci: {
        '/media/usb': [
          {
            type: 'sigstoreSigned',
            keyPath: '/k.pub',
            signedIdentity: { type: 'exactRepository', dockerRepository: 'r.example/os/microos' },
          },
        ],
      },
    },
  });

  it('picks the most specific scope', () => {
    const p = parsePolicy(policyText);
    assert.equal(requirementsFor(p, parseReference('r.example/os/microos:1')).scope, 'r.example/os');
    assert.equal(requirementsFor(p, parseReference('r.example/os/debug:1')).scope, 'r.example/os/debug:1');
    assert.equal(requirementsFor(p, parseReference('r.example/os/debug:2')).scope, 'r.example/os');
    assert.equal(requirementsFor(p, parseReference('r.example/other')).scope, 'r.example');
    assert.equal(requirementsFor(p, parseReference('a.b.example.org/x')).scope, '*.example.org');
    assert.equal(requirementsFor(p, parseReference('elsewhere.example/x')).scope, 'default');
    assert.equal(requirementsFor(p, parseReference('oci:/media/usb/layout:stable')).scope, '/media/usb');
    assert.equal(requirementsFor(p, parseReference('oci:/tmp/x')).scope, 'default');
    assert.deepEqual(policyScopes(parseReference('oci:/a/b:t')).scopes, ['/a/b:t', '/a/b', '/a', '']);
  });

  it('parses strictly', () => {
    const bad = [
      '{}',
      'not json',
      '{"default":[]}',
      '{"default":[{"type":"reject","x":1}]}',
      '{"default":[{"type":"nope"}]}',
      '{"default":[{"type":"sigstoreSigned"}]}',
      '{"default":[{"type":"sigstoreSigned","keyPath":"a","keyData":"b"}]}',
      '{"default":[{"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"exactReference","dockerReference":"r.example/x"}}]}',
      '{"default":[{"type":"reject"}],"transports":{"oci":{"/":[{"type":"reject"}]}}}',
      '{"default":[{"type":"reject"}],"extra":1}',
    ];
    for (const text of bad)
      assert.throws(
        () => parsePolicy(text),
        (e: unknown) => isTiuError(e, 'POLICY_INVALID'),
        text,
      );
  });

  it('loads from a path and reports a missing file', () => {
    const path = join(dir, 'policy.json');
    writeFileSync(path, '{"default":[{"type":"insecureAcceptAnything"}]}');
    assert.equal(loadPolicy(path).default[0]!.type, 'insecureAcceptAnything');
    assert.throws(
      () => loadPolicy(join(dir, 'missing.json')),
      (e: unknown) => isTiuError(e, 'POLICY_NOT_FOUND'),
    );
  });

  it('evaluates reject, insecureAcceptAnything and sigstoreSigned (keyPath relative to the policy, keyData)', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pubPem = publicKey.export({ format: 'pem', type: 'spki' }).toString();
    writeFileSync(join(dir, 'os.pub'), pubPem);
    const p = parsePolicy(policyText, 'test-policy', dir);
    const t = new TestTarget();
    const img = await putImage(t, '1');
    const mic = parseReference('r.example/os/microos:1');
    await assert.rejects(checkPolicy(p, t, img, mic), (e: unknown) => isTiuError(e, 'SIGNATURE_MISSING'));
    await assert.rejects(checkPolicy(p, t, img, parseReference('elsewhere.example/x:1')), (e: unknown) =>
      isTiuError(e, 'POLICY_REJECTED'),
    );
    await assert.rejects(checkPolicy(p, t, img, parseReference('r.example/os/debug:1')), (e: unknown) =>
      isTiuError(e, 'POLICY_REJECTED'),
    );
    assert.deepEqual((await checkPolicy(p, t, img, parseReference('r.example/other:1'))).accepted, [
      { type: 'insecureAcceptAnything' },
    ]);

    await signImage(t, img, privateKey, { dockerReference: 'r.example/os/microos:1' });
    const decision = await checkPolicy(p, t, img, mic);
    assert.equal(decision.scope, 'r.example/os');
    assert.equal(decision.accepted[0]!.signatures!.length, 1);
    // Signed for :1, pulled as :2 -> the default matchRepoDigestOrExact refuses.
    await assert.rejects(checkPolicy(p, t, img, parseReference('r.example/os/microos:2')), (e: unknown) =>
      isTiuError(e, 'IDENTITY_MISMATCH'),
    );

    // keyData, and a layout scope with exactRepository (a layout has no identity of its own).
    const p2 = parsePolicy(
      JSON.stringify({
        default: [{ type: 'reject' }],
        transports: {
          oci: {
            '': [
              {
                type: 'sigstoreSigned',
                keyData: Buffer.from(pubPem).toString('base64'),
                signedIdentity: { type: 'exactRepository', dockerRepository: 'r.example/os/microos' },
              },
            ],
          },
        },
      }),
    );
    await checkPolicy(p2, t, img, parseReference('oci:/media/usb/l:1'));
    // matchRepository on a layout needs an identity from the caller.
    const p3 = parsePolicy(
      JSON.stringify({
        default: [
          {
            type: 'sigstoreSigned',
            keyData: Buffer.from(pubPem).toString('base64'),
            signedIdentity: { type: 'matchRepository' },
          },
        ],
      }),
    );
    await assert.rejects(checkPolicy(p3, t, img, parseReference('oci:/media/usb/l:1')), (e: unknown) =>
      isTiuError(e, 'IDENTITY_MISMATCH'),
    );
    await checkPolicy(p3, t, img, parseReference('oci:/media/usb/l:1'), { identity: d('r.example/os/microos:1') });

    // The copy() hook shape.
    const hook = policyVerifier(p, mic);
    await hook(t, img);
    await assert.rejects(policyVerifier(p, parseReference('elsewhere.example/x:1'))(t, img), (e: unknown) =>
      isTiuError(e, 'POLICY_REJECTED'),
    );
  });

  it('refuses requirements it cannot check', async () => {
    const t = new TestTarget();
    const img = await putImage(t, '1');
    for (const req of [
      { type: 'signedBy', keyType: 'GPGKeys', keyPath: '/x.gpg' },
      { type: 'sigstoreSigned', pki: { caRootsPath: '/ca', subjectEmail: 'a@example.com' } },
    ]) {
      const p = parsePolicy(JSON.stringify({ default: [req] }));
      await assert.rejects(checkPolicy(p, t, img, parseReference('r.example/a:1')), (e: unknown) =>
        isTiuError(e, 'POLICY_UNSUPPORTED'),
      );
    }
  });
});
