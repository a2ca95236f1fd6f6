import assert from 'node:assert/strict';
import { IndexTextParser, INDEX_HEAD } from '../../src/deploy/apply/content-index-text.ts';
import type { IndexKeyParts } from '../../src/deploy/apply/index-table.ts';

const digestOf = (i: number) => `sha256:${i.toString(16).padStart(64, '0')}`;

/** A key's parts as BigInt makes them of each decimal (the size a number): what a member must read as. */
function partsOf(key: string): IndexKeyParts {
  const [ino, size, mtimeNs, ctimeNs] = key.split(':').map((n) => BigInt(n)) as [bigint, bigint, bigint, bigint];
  return { ino, size: Number(size), mtimeNs, ctimeNs };
}

function indexText(n: number, keyOf?: (i: number) => string): { text: string; members: [IndexKeyParts, string][] } {
  const keys: string[] = [];
  for (let i = 0; i < n; i++)
    keys.push(keyOf?.(i) ?? `${i * 1_000_003}:${i}:-${i * 7}:${18_446_744_073_709_551_615n - BigInt(i)}`);
  return {
    text: INDEX_HEAD + keys.map((k, i) => `"${k}":"${digestOf(i)}"`).join(',') + '}}',
    members: keys.map((k, i) => [partsOf(k), digestOf(i)]),
  };
}

function parse(text: string, piece: number): { members: [IndexKeyParts, string][]; valid: boolean; held: number } {
  const members: [IndexKeyParts, string][] = [];
  const p = new IndexTextParser((k, d) => members.push([k, d]));
  const bytes = Buffer.from(text, 'latin1');
  for (let at = 0; at < bytes.length; at += piece) if (!p.push(bytes.subarray(at, at + piece))) break;
  return { members, valid: p.end(), held: p.maxHeld };
}

describe('deploy/apply/content-index-text', () => {
  it('reads every member whatever the pieces are cut like, keeping less than a member between them', () => {
    const { text, members } = indexText(500);
    for (const piece of [1, 3, 17, 64, 4096, 1 << 20]) {
      const r = parse(text, piece);
      assert.equal(r.valid, true, `pieces of ${piece}`);
      assert.deepEqual(r.members, members, `pieces of ${piece}`);
      assert.ok(r.held < 200, `pieces of ${piece}: held ${r.held} characters`);
    }
  });

  it('reads each part exactly, short or long, signed or not, leading zeros and all', () => {
    const keys = [
      '0:0:0:0',
      '0:0:-0:-1',
      '999999999999999:999999999999999:-99999999999999:99999999999999', // 15 characters: read as numbers
      '1000000000000000:1000000000000000:-100000000000000:100000000000000', // 16: through BigInt
      '18446744073709551615:9007199254740993:-9223372036854775808:9223372036854775807',
      '99999999999999999999999:123456789012345678:00042:-000000000000000000042',
    ];
    const { text, members } = indexText(keys.length, (i) => keys[i]!);
    for (const piece of [1, 13, 1 << 20]) assert.deepEqual(parse(text, piece).members, members, `pieces of ${piece}`);
    // A size past 2^53 reads as the double nearest it, as Number(BigInt) gives (the table refuses it: not a safe integer).
    assert.equal(members[4]![0].size, 9007199254740992);
  });

  it('reads an empty index', () => {
    for (const piece of [1, 5, 100])
      assert.deepEqual(parse(INDEX_HEAD + '}}', piece), {
        members: [],
        valid: true,
        held: parse(INDEX_HEAD + '}}', piece).held,
      });
  });

  it('calls anything else invalid, without holding what does not match', () => {
    const { text } = indexText(50);
    const broken = [
      text.slice(0, -1),
      text + ' ',
      text.replace('"version":1', '"version":2'),
      '{}',
      '',
      text.replace(',', ';'),
      text.replace('sha256:0', 'sha256:G'),
      INDEX_HEAD + '"1:2:3:4":"' + 'a'.repeat(100_000),
    ];
    for (const b of broken) {
      for (const piece of [1, 7, 1 << 20]) {
        const r = parse(b, piece);
        assert.equal(r.valid, false, `${JSON.stringify(b.slice(-20))} in pieces of ${piece}`);
        assert.ok(r.held < 400, `held ${r.held}`);
      }
    }
  });
});
