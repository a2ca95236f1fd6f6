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

/**
 * Where a stored action's entry may be kept as a row number instead of a reference: the new
 * tree's table (path-table.ts), which keeps a TOC's regular file as its path and a row of its
 * block and makes the entry again when asked. An update's plan then holds no object per file.
 */
export interface EntryRows {
  /** The row whose entry is `e` (or, for a TOC file, one equal to it), else -1. */
  rowHolding(e: TreeEntry): number;
  entryAtRow(r: number): TreeEntry;
  pathAtRow(r: number): string;
}

/** Slots by number in an array (made at the expected length), with a Map's get, set and delete. */
class SlotArray {
  readonly #slots: (Action | TreeEntry | undefined)[];
  constructor(expected: number) {
    this.#slots = new Array<Action | TreeEntry | undefined>(expected);
  }
  get(i: number): Action | TreeEntry | undefined {
    return this.#slots[i];
  }
  set(i: number, v: Action | TreeEntry): void {
    this.#slots[i] = v;
  }
  delete(i: number): void {
    if (i < this.#slots.length) this.#slots[i] = undefined;
  }
}

/** A slot whose entry or action is in `#objects`, not a row of the tree. */
const NOT_A_ROW = -1;

export class PlanActions implements ActionList {
  /** Per slot: the tree's row of a stored action's entry, else NOT_A_ROW (also for a reserved slot). */
  #rows: Int32Array;
  /**
   * The entry of a stored action that has no row (a tree without rows, or an entry the tree no
   * longer holds), the object of any other action, by slot. undefined: reserved, not set yet.
   * With a tree few slots are here (reflinks, fixes other than the mtime alone): a Map; without
   * one every slot is: an array.
   */
  readonly #objects: Map<number, Action | TreeEntry> | SlotArray;
  #length = 0;
  /** Per slot: codeOf() its action (0 where the action is an object in `#objects`). */
  #codes: Uint8Array;
  readonly #tree: EntryRows | undefined;

  /**
   * `expected`: how many actions there will be (the planner knows: one per path), so nothing
   * grows; `tree`: the entries' rows (without one every entry is kept as a reference).
   */
  constructor(expected = 0, tree?: EntryRows) {
    const n = Math.max(expected, 1024);
    this.#rows = new Int32Array(n);
    this.#codes = new Uint8Array(n);
    this.#tree = tree;
    this.#objects = tree ? new Map() : new SlotArray(expected);
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
    const i = this.#length++;
    if (i >= this.#codes.length) {
      const n = this.#codes.length * 2;
      this.#codes = resized(this.#codes, n);
      this.#rows = resized(this.#rows, n);
    }
    this.#codes[i] = 0;
    this.#rows[i] = NOT_A_ROW;
    this.#objects.delete(i);
  }

  /** Append an action whose entry is the tree's row `row` (the caller read it from there). */
  pushAtRow(a: Action, row: number): void {
    this.reserve();
    this.set(this.#length - 1, a, row);
  }

  /** `row`: the tree's row of `a.entry`, when the caller read the entry from there (else it is looked up). */
  set(i: number, a: Action, row?: number): void {
    if (!(i >= 0 && i < this.#length)) throw new RangeError(`no plan action ${i}`);
    const code = codeOf(a);
    this.#codes[i] = code;
    row = code && this.#tree ? (row ?? this.#tree.rowHolding(a.entry)) : NOT_A_ROW;
    this.#rows[i] = row;
    if (row !== NOT_A_ROW) this.#objects.delete(i);
    else this.#objects.set(i, code ? a.entry : a);
  }

  at(i: number): Action | undefined {
    if (i < 0) i += this.#length;
    if (!(i >= 0 && i < this.#length)) return undefined;
    const code = this.#codes[i]!;
    if (!code) return this.#objects.get(i) as Action | undefined;
    const a: Action = { kind: KINDS[(code & KIND_MASK) - 1]!, entry: this.entryAt(i) };
    if (code & FIX_MTIME) a.fix = MTIME_ONLY;
    if (code & HAS_REPLACE) a.replace = (code & REPLACE_TRUE) !== 0;
    return a;
  }

  /** Action `i`'s kind, without making the action. */
  kindAt(i: number): ActionKind {
    const code = this.#codes[i]!;
    return code ? KINDS[(code & KIND_MASK) - 1]! : (this.#objects.get(i) as Action).kind;
  }

  /** Action `i`'s entry, without making the action (a TOC file's is made again from its row). */
  entryAt(i: number): TreeEntry {
    const row = this.#rows[i]!;
    if (row !== NOT_A_ROW) return this.#tree!.entryAtRow(row);
    const o = this.#objects.get(i)!;
    return this.#codes[i] ? (o as TreeEntry) : (o as Action).entry;
  }

  /** Action `i`'s entry's path, without making the entry (a TOC file's is read from the tree's row). */
  pathAt(i: number): string {
    const row = this.#rows[i]!;
    if (row !== NOT_A_ROW) return this.#tree!.pathAtRow(row);
    const o = this.#objects.get(i)!;
    return this.#codes[i] ? (o as TreeEntry).path : (o as Action).entry.path;
  }

  /** Action `i` when it is kept as an object (it says more than a kind and an entry), else undefined. */
  objectAt(i: number): Action | undefined {
    return this.#codes[i] ? undefined : (this.#objects.get(i) as Action);
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
