/**
 * A plan's actions as the planner keeps them: most entries of an update are kept as they are,
 * and a `keep` is stored as its entry alone, its action made when it is read (a short-lived
 * object). An action object per entry ({kind, entry}, ~40 bytes beside its slot) was the largest
 * part of the plan on the bench's larger tree (46k entries, 1.8 MiB), and an update plans twice:
 * the check's plan, then the apply's against the new snapshot.
 */
import type { Action, ActionList, TreeEntry } from './types.ts';
import { resized } from '../../util/typed-resize.ts';

export class PlanActions implements ActionList {
  /** The entry of a kept one, the action of any other; undefined: reserved, not set yet. */
  readonly #slots: (Action | TreeEntry | undefined)[] = [];
  /** 1 where the slot is a kept entry. */
  #kept = new Uint8Array(1024);

  get length(): number {
    return this.#slots.length;
  }

  /** Append an action. */
  push(a: Action): void {
    this.#slots.push(undefined);
    this.set(this.#slots.length - 1, a);
  }

  /** Append a slot whose action is set later (a hardlink waits for its target's). */
  reserve(): void {
    this.#slots.push(undefined);
  }

  set(i: number, a: Action): void {
    if (i >= this.#kept.length) {
      this.#kept = resized(this.#kept, Math.max(i + 1, this.#kept.length * 2));
    }
    const keep = a.kind === 'keep';
    this.#kept[i] = keep ? 1 : 0;
    this.#slots[i] = keep ? a.entry : a;
  }

  at(i: number): Action | undefined {
    if (i < 0) i += this.#slots.length;
    const s = this.#slots[i];
    if (s === undefined) return undefined;
    return this.#kept[i] ? { kind: 'keep', entry: s as TreeEntry } : (s as Action);
  }

  *entries(): IterableIterator<[number, Action]> {
    for (let i = 0; i < this.#slots.length; i++) yield [i, this.#actionAt(i)];
  }

  *[Symbol.iterator](): IterableIterator<Action> {
    for (let i = 0; i < this.#slots.length; i++) yield this.#actionAt(i);
  }

  #actionAt(i: number): Action {
    const a = this.at(i);
    if (!a) throw new Error(`plan action ${i} was reserved and never set`);
    return a;
  }
}
