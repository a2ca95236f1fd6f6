import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { isTiuError } from '../../../src/errors.ts';
import { parseReference, type DockerReference } from '../../../src/oci/reference.ts';
import {
  EXPIRES_CLAIM,
  expiryAfter,
  expiryOf,
  formatRfc3339,
  parseDuration,
  parseRfc3339,
} from '../../../src/trust/expiry.ts';
import { checkFreshness } from '../../../src/trust/freshness.ts';
import type { PolicyDecision } from '../../../src/trust/policy.ts';
import { signImage } from '../../../src/trust/sign.ts';
import { listSignatures } from '../../../src/trust/signatures.ts';
import { verifyImageSignatures, type VerifiedSignature } from '../../../src/trust/verify.ts';
import { compareVersions } from '../../../src/trust/version.ts';
import { putImage, TestTarget } from '../../helpers/trust-target.ts';

function throwsCode(f: () => unknown, code: string, text?: RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(isTiuError(e), String(e));
    assert.equal(e.code, code, e.message);
    if (text) assert.match(e.message, text);
    return true;
  });
}

function sig(optional: Record<string, unknown> | null, n = 1): VerifiedSignature {
  return {
    kind: 'simplesigning',
    dockerReference: 'r.example/os/microos:stable',
    manifestDigest: `sha256:${'a'.repeat(64)}`,
    optional,
    payloadDigest: `sha256:${String(n).repeat(64)}`,
    keyIndex: 0,
  };
}

function decision(...signatures: VerifiedSignature[]): PolicyDecision {
  return { transport: 'docker', scope: 'default', accepted: [{ type: 'sigstoreSigned', signatures }] };
}

describe('trust/version: rpm version order', () => {
  const cases: [string, string, -1 | 0 | 1][] = [
    ['20261204', '20261205', -1],
    ['20261205', '20261204', 1],
    ['20261204', '20261204', 0],
    ['6.1.2', '6.1.10', -1],
    ['6.2', '6.1.10', 1],
    ['1.0', '1.0.1', -1],
    ['1.0a', '1.0', 1],
    ['1.0', '1.0a', -1],
    ['1.a', '1.1', -1], // a digit segment is newer than a letter segment
    ['1.01', '1.1', 0], // leading zeros do not count
    ['1.0-1', '1.0.1', 0], // separators only separate
    ['1.0~rc1', '1.0', -1],
    ['1.0~rc1', '1.0~rc2', -1],
    ['1.0^git1', '1.0', 1],
    ['1.0^git1', '1.0.1', -1],
    ['alpha', 'beta', -1],
    ['123456789012345678901234567890', '123456789012345678901234567891', -1],
  ];
  for (const [a, b, want] of cases)
    it(`${a} vs ${b}: ${want}`, () => {
      assert.equal(compareVersions(a, b), want);
      assert.equal(compareVersions(b, a), -want === 0 ? 0 : -want);
    });
});

describe('trust/expiry: durations and times', () => {
  it('parses s, m, h, d and w and nothing else', () => {
    assert.equal(parseDuration('30d'), 30 * 86_400_000);
    assert.equal(parseDuration('12h'), 12 * 3_600_000);
    assert.equal(parseDuration('90m'), 90 * 60_000);
    assert.equal(parseDuration('45s'), 45_000);
    assert.equal(parseDuration('2w'), 14 * 86_400_000);
    for (const bad of ['', '30', 'd', '0d', '-1d', '1.5h', '30 days', '1y', '9999999999d', '1d2h'])
      assert.equal(parseDuration(bad), undefined, bad);
  });

  it('writes RFC 3339 UTC with seconds and refuses a bad --expires as USAGE', () => {
    const now = new Date('2026-12-05T06:00:00.750Z');
    assert.equal(expiryAfter('30d', now), '2027-01-04T06:00:00Z');
    assert.equal(expiryAfter('90m', now), '2026-12-05T07:30:00Z');
    assert.equal(formatRfc3339(new Date(0)), '1970-01-01T00:00:00Z');
    throwsCode(() => expiryAfter('soon', now), 'USAGE', /--expires "soon"/);
  });

  it('reads RFC 3339 with offsets and fractions, nothing else', () => {
    assert.equal(parseRfc3339('2026-12-05T06:00:00Z')?.toISOString(), '2026-12-05T06:00:00.000Z');
    assert.equal(parseRfc3339('2026-12-05T07:00:00+01:00')?.toISOString(), '2026-12-05T06:00:00.000Z');
    assert.equal(parseRfc3339('2026-12-05t06:00:00.5z')?.toISOString(), '2026-12-05T06:00:00.500Z');
    for (const bad of ['2026-12-05', '2026-12-05 06:00:00Z', '2026-13-05T06:00:00Z', 'tomorrow', 1765000000, null])
      assert.equal(parseRfc3339(bad), undefined, String(bad));
    assert.equal(expiryOf({ [EXPIRES_CLAIM]: 'never' }), undefined);
    assert.equal(expiryOf(null), undefined);
  });
});

describe('trust/freshness', () => {
  const now = new Date('2026-12-05T06:00:00Z');

  it('accepts when one accepted signature expires in the future, reporting the latest expiry', () => {
    const f = checkFreshness(
      decision(
        sig({ [EXPIRES_CLAIM]: '2026-11-01T00:00:00Z' }, 1),
        sig({ [EXPIRES_CLAIM]: '2027-01-01T00:00:00Z' }, 2),
      ),
      'img',
      now,
    );
    assert.equal(formatRfc3339(f.expires), '2027-01-01T00:00:00Z');
    assert.equal(f.payloadDigest, `sha256:${'2'.repeat(64)}`);
  });

  it('refuses when every expiry passed, naming the latest one: SIGNATURE_EXPIRED', () => {
    throwsCode(
      () =>
        checkFreshness(
          decision(
            sig({ [EXPIRES_CLAIM]: '2026-11-01T00:00:00Z' }, 1),
            sig({ [EXPIRES_CLAIM]: '2026-12-05T06:00:00Z' }, 2),
          ),
          'img',
          now,
        ),
      'SIGNATURE_EXPIRED',
      /expired at 2026-12-05T06:00:00Z/,
    );
  });

  it('refuses when no accepted signature carries an expiry (or only a malformed one), and insecureAcceptAnything', () => {
    throwsCode(
      () => checkFreshness(decision(sig(null), sig({ a: 'b' }, 2)), 'img', now),
      'SIGNATURE_EXPIRED',
      /carries an expiry/,
    );
    throwsCode(
      () => checkFreshness(decision(sig({ [EXPIRES_CLAIM]: 'next year' })), 'img', now),
      'SIGNATURE_EXPIRED',
      /carries an expiry/,
    );
    throwsCode(
      () =>
        checkFreshness(
          { transport: 'docker', scope: 'default', accepted: [{ type: 'insecureAcceptAnything' }] },
          'img',
          now,
        ),
      'SIGNATURE_EXPIRED',
      /none of the 0 signature/,
    );
  });

  it('believes only verified payloads: the expiry comes through verifyImageSignatures; a re-sign with a new expiry is a new signature', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const t = new TestTarget();
    const img = await putImage(t, 'v1');
    const dockerReference = 'r.example/os/microos:stable';
    const old = await signImage(t, img, privateKey, {
      dockerReference,
      expires: '2026-11-01T00:00:00Z',
      annotations: { a: '1' },
    });
    assert.equal(old.added, true);
    const same = await signImage(t, img, privateKey, {
      dockerReference,
      annotations: { a: '1' },
      expires: '2026-11-01T00:00:00Z',
    });
    assert.equal(same.added, false, 'the same claims are a duplicate');
    const opts = {
      keys: [publicKey],
      identity: { type: 'matchRepository' as const },
      imageIdentity: parseReference(dockerReference) as DockerReference,
    };
    const r1 = await verifyImageSignatures(t, img, opts);
    assert.equal(r1.verified[0]?.optional?.[EXPIRES_CLAIM], '2026-11-01T00:00:00Z');
    throwsCode(() => checkFreshness(decision(...r1.verified), 'img', now), 'SIGNATURE_EXPIRED');
    const renewed = await signImage(t, img, privateKey, {
      dockerReference,
      annotations: { a: '1' },
      expires: '2027-01-01T00:00:00Z',
    });
    assert.equal(renewed.added, true, 'a new expiry is a new signature');
    assert.equal((await listSignatures(t, img.digest)).length, 2);
    const r2 = await verifyImageSignatures(t, img, opts);
    assert.equal(formatRfc3339(checkFreshness(decision(...r2.verified), 'img', now).expires), '2027-01-01T00:00:00Z');
    await assert.rejects(
      signImage(t, img, privateKey, { dockerReference, annotations: { [EXPIRES_CLAIM]: '2099-01-01T00:00:00Z' } }),
      (e: unknown) => isTiuError(e) && e.code === 'USAGE',
    );
  });
});
