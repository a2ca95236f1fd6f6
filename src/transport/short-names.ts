/**
 * Short image names (`alpine`, `tools/x:1`: no registry) resolved as podman resolves them
 * through containers/image, without ever prompting (tiu runs unattended):
 *   1. an [aliases] entry of registries.conf for the name (tag and digest kept) is the one candidate;
 *   2. else each of unqualified-search-registries, in order, with the name appended;
 *   3. none: SHORT_NAME_UNRESOLVED.
 * Several candidates under short-name-mode "enforcing" (the default) are SHORT_NAME_AMBIGUOUS,
 * which is podman's answer without a terminal; "permissive" and "disabled" keep them all, and a
 * pull takes the first that has the image. `docker://NAME` is never a short name: it means
 * docker.io, as in skopeo.
 */
import { TiuError } from '../errors.ts';
import { parseReference, type DockerReference } from '../oci/reference.ts';
import type { RegistriesConf } from './registry/registries-conf.ts';

/** A bare name whose first component is not a registry (no '.' or ':', not localhost). */
export function isShortName(input: string): boolean {
  if (/^[a-z][a-z0-9+-]*:\/\//.test(input) || input.startsWith('oci:') || input.startsWith('oci-archive:'))
    return false;
  const slash = input.indexOf('/');
  if (slash === -1) return true;
  const first = input.slice(0, slash);
  return !(first.includes('.') || first.includes(':') || first === 'localhost');
}

function splitName(input: string): { repo: string; suffix: string } {
  const at = input.indexOf('@');
  const noDigest = at === -1 ? input : input.slice(0, at);
  const colon = noDigest.lastIndexOf(':');
  const end = colon > noDigest.lastIndexOf('/') ? colon : noDigest.length;
  return { repo: input.slice(0, end), suffix: input.slice(end) };
}

function qualified(text: string): DockerReference {
  return parseReference(`docker://${text}`) as DockerReference;
}

export interface ShortNameResolution {
  candidates: DockerReference[];
  /** Where they came from, for messages. */
  origin: string;
}

export function shortNameCandidates(input: string, conf: RegistriesConf): ShortNameResolution {
  // Validates the whole name first (tag and digest syntax).
  parseReference(`docker://${input}`);
  const { repo, suffix } = splitName(input);
  const alias = conf.aliases[repo];
  if (alias) {
    if (isShortName(alias.value)) {
      throw new TiuError(
        'CONFIG_INVALID',
        `${alias.source}: alias ${JSON.stringify(repo)} = ${JSON.stringify(alias.value)} names no registry`,
        {
          path: alias.source,
        },
      );
    }
    return { candidates: [qualified(alias.value + suffix)], origin: `the alias in ${alias.source}` };
  }
  const search = conf.unqualifiedSearchRegistries;
  if (search.length === 0) {
    const where =
      conf.unqualifiedSearchOrigin ?? (conf.files.length ? conf.files.join(', ') : 'no registries.conf was found');
    throw new TiuError(
      'SHORT_NAME_UNRESOLVED',
      `short name ${JSON.stringify(input)} has no alias and no unqualified-search-registries (${where})`,
      {
        name: input,
      },
    );
  }
  const origin = `unqualified-search-registries in ${conf.unqualifiedSearchOrigin ?? 'registries.conf'}`;
  const candidates = search.map((r) => qualified(`${r}/${input}`));
  const mode = conf.shortNameMode ?? 'enforcing';
  if (candidates.length > 1 && mode === 'enforcing') {
    throw new TiuError(
      'SHORT_NAME_AMBIGUOUS',
      `short name ${JSON.stringify(input)} could come from ${search.join(', ')} (${origin}) and short-name-mode is enforcing; name the registry`,
      { name: input, registries: search },
    );
  }
  return { candidates, origin };
}
