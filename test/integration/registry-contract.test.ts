/**
 * The shared Target contract against the registry Target: on distribution 2.8 (referrers by
 * the tag-schema fallback) and on the in-harness registry that has the referrers API.
 */
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';
import { requireRoot } from '../helpers/env.ts';
import { startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { runTargetContract } from '../helpers/target-contract.ts';

describe('registry Target contract', function () {
  this.timeout(60_000);
  let reg: RunningRegistry;
  let fake: FakeRegistry;
  let n = 0;
  before(async function () {
    requireRoot(this, 'runs a registry');
    reg = await startRegistry();
    fake = await startFakeRegistry({ referrersApi: true });
  });
  after(async () => {
    await reg?.stop();
    await fake?.stop();
  });
  const make = (host: () => string) => () => {
    const target = openRegistryTarget(parseReference(`docker://${host()}/contract/t${n++}`) as DockerReference, {
      registriesConf: false,
    });
    return Promise.resolve({ target, cleanup: () => target.close() });
  };
  runTargetContract(
    'registry: distribution 2.8',
    make(() => reg.host),
  );
  runTargetContract(
    'registry: referrers API',
    make(() => fake.host),
  );
});
