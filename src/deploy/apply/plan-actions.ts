/**
 * A plan's actions as the planner keeps them. Most actions of an update are an entry and a kind
 * (and whether the path there must go first): such an action is stored as its entry alone, its
 * kind and `replace` in a byte beside it, and the action is made when it is read (a short-lived
 * object). An action object per entry ({kind, entry, replace}, ~48 bytes beside its slot) was
 * the largest part of the plan on the bench's larger tree: a first install of it makes 44,500
 * `create`/`write` actions (2 MiB of heap through the whole writing), a delta update's `keep`s
 * as many; and an update plans twice, the check's plan, then the apply's against the new
 * snapshot. Actions with more to say (a reflink's source, a meta fix other than the mtime alone)
 * stay objects; a fix of the mtime alone (MTIME_ONLY, the most common) is a bit beside the kind.
 */
import { MTIME_ONLY, type Action, type ActionKind, type ActionList, type TreeEntry } from './types.ts';
import { resized } from '../../util/typed-resize.ts';

/** Kinds by code (a stored slot's byte is 1 + the index, 0 for an action kept as an object). */
const KINDS: readonly ActionKind[] = ['keep', 'meta', 'clone', 'reflink', 'write', 'create', 'link'];
const KIND_MASK = 0x0f;
/** The action had a `replace` field (its value in REPLACE_TRUE): read back with the same fields. */
const HAS_REPLACE = 0x10;
const REPLACE_TRUE = 0x20;
/** The action's fix is MTIME_ONLY (a `meta` of the mtime alone: thousands in an update of rebuilt packages). */
const FIX_MTIME = 0x40;

/** The byte for an action that is its kind, entry and `replace` alone, else 0 (kept as an object). */
function codeOf(a: Action): number {
  if ('from' in a || 'fromNew' in a || 'fromSnapshot' in a) return 0;
  if ('fix' in a && a.fix !== MTIME_ONLY) return 0;
  let code = KINDS.indexOf(a.kind) + 1;
  if ('fix' in a) code |= FIX_MTIME;
  if ('replace' in a) {
    if (typeof a.replace !== 'boolean') return 0;
    code |= HAS_REPLACE | (a.replace ? REPLACE_TRUE : 0);
  }
  return code;
}

export class PlanActions implements ActionList {
  /**
   * The entry of a stored action, the object of any other; undefined: reserved, not set yet.
   * The first `length` slots are the actions (the list is made at the expected count).
   */
  readonly #slots: (Action | TreeEntry | undefined)[];
  #length = 0;
  /** Per slot: codeOf() its action (0 where the slot holds the action object). */
  #codes: Uint8Array;

  /** `expected`: how many actions there will be (the planner knows: one per path), so nothing grows. */
  constructor(expected = 0) {
    this.#slots = new Array<Action | TreeEntry | undefined>(expected);
    this.#codes = new Uint8Array(Math.max(expected, 1024));
  }

  get length(): number {
    return this.#length;
  }

  /** Append an action. */
  push(a: Action): void {
    this.reserve();
    this.set(this.#length - 1, a);
  }

  /** Append a slot whose action is set later (a hardlink waits for its target's). */
  reserve(): void {
    this.#slots[this.#length++] = undefined;
  }

  set(i: number, a: Action): void {
    if (!(i >= 0 && i < this.#length)) throw new RangeError(`no plan action ${i}`);
    if (i >= this.#codes.length) {
      this.#codes = resized(this.#codes, Math.max(i + 1, this.#codes.length * 2));
    }
    const code = codeOf(a);
    this.#codes[i] = code;
    this.#slots[i] = code ? a.entry : a;
  }

  at(i: number): Action | undefined {
    if (i < 0) i += this.#length;
    if (!(i >= 0 && i < this.#length)) return undefined;
    const s = this.#slots[i];
    if (s === undefined) return undefined;
    const code = this.#codes[i]!;
    if (!code) return s as Action;
    const a: Action = { kind: KINDS[(code & KIND_MASK) - 1]!, entry: s as TreeEntry };
    if (code & FIX_MTIME) a.fix = MTIME_ONLY;
    if (code & HAS_REPLACE) a.replace = (code & REPLACE_TRUE) !== 0;
    return a;
  }

  /** Action `i`'s kind, without making the action. */
  kindAt(i: number): ActionKind {
    const code = this.#codes[i]!;
    return code ? KINDS[(code & KIND_MASK) - 1]! : (this.#slots[i] as Action).kind;
  }

  /** Action `i`'s entry, without making the action. */
  entryAt(i: number): TreeEntry {
    const s = this.#slots[i]!;
    return this.#codes[i] ? (s as TreeEntry) : (s as Action).entry;
  }

  /** Action `i` when it is kept as an object (it says more than a kind and an entry), else undefined. */
  objectAt(i: number): Action | undefined {
    return this.#codes[i] ? undefined : (this.#slots[i] as Action);
  }

  *entries(): IterableIterator<[number, Action]> {
    for (let i = 0; i < this.#length; i++) yield [i, this.#actionAt(i)];
  }

  *[Symbol.iterator](): IterableIterator<Action> {
    for (let i = 0; i < this.#length; i++) yield this.#actionAt(i);
  }

  #actionAt(i: number): Action {
    const a = this.at(i);
    if (!a) throw new Error(`plan action ${i} was reserved and never set`);
    return a;
  }
}
