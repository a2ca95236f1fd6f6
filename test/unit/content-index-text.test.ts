import assert from 'node:assert/strict';
import { IndexTextParser, INDEX_HEAD } from '../../src/deploy/apply/content-index-text.ts';

const digestOf = (i: number) => `sha256:${i.toString(16).padStart(64, '0')}`;

function indexText(n: number): { text: string; members: [string, string][] } {
  const members: [string, string][] = [];
  for (let i = 0; i < n; i++)
    members.push([`${i * 1_000_003}:${i}:-${i * 7}:${18_446_744_073_709_551_615n - BigInt(i)}`, digestOf(i)]);
  return { text: INDEX_HEAD + members.map(([k, d]) => `"${k}":"${d}"`).join(',') + '}}', members };
}

function parse(text: string, piece: number): { members: [string, string][]; valid: boolean; held: number } {
  const members: [string, string][] = [];
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
