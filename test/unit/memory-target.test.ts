import { MemoryTarget } from '../helpers/memory-target.ts';
import { runTargetContract } from '../helpers/target-contract.ts';

runTargetContract('memory', () => Promise.resolve({ target: new MemoryTarget(), cleanup: () => Promise.resolve() }));
