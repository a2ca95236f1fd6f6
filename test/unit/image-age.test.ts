import assert from 'node:assert/strict';
import { formatUserdata } from '../../src/host/snapper.ts';
import { ageOfManifests, judgeAge, type ImageAge } from '../../src/deploy/image-age.ts';
import { ageUserdata, deriveState, UD } from '../../src/deploy/state.ts';
import { escapeUserdata, MAX_USERDATA_VALUE, unescapeUserdata } from '../../src/deploy/userdata-text.ts';
import { Annotation } from '../../src/oci/types.ts';

const manifest = (annotations?: Record<string, string>) =>
  Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'c'.repeat(64)}`, size: 2 },
      layers: [],
      ...(annotations ? { annotations } : {}),
    }),
  );
const index = (annotations?: Record<string, string>) =>
  Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: `sha256:${'d'.repeat(64)}`,
          size: 10,
          platform: { os: 'linux', architecture: 'amd64' },
        },
      ],
      ...(annotations ? { annotations } : {}),
    }),
  );
const both = (root: Buffer, platform = root) => ({ root: { bytes: root }, platform: { bytes: platform } });

describe('deploy/image-age: an image age from its signed manifests', () => {
  it('reads created (normalised to UTC seconds) and version from a manifest', () => {
    const m = manifest({ [Annotation.Created]: '2026-12-04T10:00:00.123+01:00', [Annotation.Version]: '20261204' });
    assert.deepEqual(ageOfManifests(both(m)), { created: '2026-12-04T09:00:00Z', version: '20261204' });
  });

  it("for an index: the platform manifest's annotations, else the index's", () => {
    const idx = index({ [Annotation.Created]: '2026-01-01T00:00:00Z', [Annotation.Version]: '1.0' });
    assert.deepEqual(ageOfManifests(both(idx, manifest({ [Annotation.Version]: '2.0' }))), {
      created: '2026-01-01T00:00:00Z',
      version: '2.0',
    });
    assert.deepEqual(ageOfManifests(both(idx, manifest())), { created: '2026-01-01T00:00:00Z', version: '1.0' });
  });

  it('hostile or malformed annotations count as absent', () => {
    const m = manifest({ [Annotation.Created]: 'last tuesday', [Annotation.Version]: '1.0\nfake=1' });
    assert.deepEqual(ageOfManifests(both(m)), {});
    assert.deepEqual(ageOfManifests(both(manifest({ [Annotation.Version]: 'x'.repeat(129) }))), {});
    assert.deepEqual(ageOfManifests(both(Buffer.from('not json'))), {});
  });
});

describe('deploy/image-age: judgeAge', () => {
  const v2: ImageAge = { created: '2026-12-04T00:00:00Z', version: '20261204' };
  const held = (age: ImageAge | undefined) => [{ snapshot: 3, role: 'default' as const, age }];

  it('older by created time, by version, or both; not older when newer or equal', () => {
    assert.equal(judgeAge({ created: '2026-12-01T00:00:00Z', version: '20261201' }, held(v2)).older.length, 2);
    assert.match(
      judgeAge({ created: '2026-12-01T00:00:00Z' }, held(v2)).older[0]!,
      /created 2026-12-01T00:00:00Z, before/,
    );
    assert.match(
      judgeAge({ version: '20261201' }, held(v2)).older[0]!,
      /version 20261201, lower than 20261204 of snapshot 3/,
    );
    // created later but version lower: still older (either says so)
    assert.equal(judgeAge({ created: '2026-12-05T00:00:00Z', version: '20261201' }, held(v2)).older.length, 1);
    assert.deepEqual(judgeAge({ created: '2026-12-05T00:00:00Z', version: '20261205' }, held(v2)).older, []);
    assert.deepEqual(judgeAge(v2, held(v2)).older, []);
  });

  it('says what cannot be compared and does not refuse', () => {
    const noData = judgeAge({}, held(v2));
    assert.deepEqual(noData.older, []);
    assert.match(noData.notes[0]!, /cannot tell .* snapshot 3 \(default\)/);
    const heldNothing = judgeAge(v2, held(undefined));
    assert.deepEqual(heldNothing.older, []);
    assert.equal(heldNothing.notes.length, 1);
    // version on one side only, created on the other: nothing comparable
    assert.equal(judgeAge({ version: '1' }, held({ created: v2.created! })).notes.length, 1);
  });
});

describe('deploy/userdata-text: image text as snapper userdata', () => {
  const hostile = ['1.0,tiu-digest=sha256:x', 'a=b', 'line\nbreak', ' padded ', '100%', 'ünï©ødé', 'tab\there', ''];

  it('escapes exactly: no , = newline or blank survives, and decoding gives the text back', () => {
    for (const text of [...hostile, '20261204', '2026-12-04T00:00:00Z', '6.1.2-1~rc1^git2+b']) {
      const v = escapeUserdata(text);
      assert.ok(v !== undefined, text);
      assert.doesNotMatch(v, /[,=\n\r\s]/, text);
      assert.equal(unescapeUserdata(v), text);
      // snapper's own formatter takes it
      assert.equal(formatUserdata({ 'tiu-version': v }), `tiu-version=${v}`);
    }
    assert.equal(escapeUserdata('20261204'), '20261204');
    assert.equal(escapeUserdata('a,b=c'), 'a%2Cb%3Dc');
  });

  it('refuses to record what is too long, and refuses to read what tiu did not write', () => {
    assert.equal(escapeUserdata(','.repeat(MAX_USERDATA_VALUE)), undefined);
    for (const bad of ['a%2', 'a%zz', 'a%2c', 'a b', '%FF', 'x'.repeat(MAX_USERDATA_VALUE + 1)])
      assert.equal(unescapeUserdata(bad), undefined, bad);
  });

  it('round-trips through userdata into the state; a value tiu did not write counts as absent', () => {
    const ud = ageUserdata({ created: '2026-12-04T00:00:00Z', version: '1.0,x=y' });
    assert.deepEqual(ud, { [UD.created]: '2026-12-04T00:00:00Z', [UD.version]: '1.0%2Cx%3Dy' });
    assert.deepEqual(ageUserdata({ version: 'v'.repeat(MAX_USERDATA_VALUE + 1) }), {});
    const row = (number: number, userdata: Record<string, string>) => ({
      number,
      type: 'single',
      default: false,
      active: false,
      date: '',
      description: '',
      cleanup: '',
      userdata,
    });
    const s = deriveState('/sys', [row(1, ud), row(2, { [UD.created]: 'yesterday', [UD.version]: 'a b' })], 1, 1);
    assert.equal(s.snapshots[0]?.created, '2026-12-04T00:00:00Z');
    assert.equal(s.snapshots[0]?.version, '1.0,x=y');
    assert.equal(s.snapshots[1]?.created, undefined);
    assert.equal(s.snapshots[1]?.version, undefined);
  });
});
