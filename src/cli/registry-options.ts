/**
 * The registry options every command that opens references takes, spelled like skopeo's:
 * --authfile, --creds (or --src-creds/--dest-creds), --tls-verify, --cert-dir, --registries-conf.
 */
import { TiuError } from '../errors.ts';
import type { RegistryClientOptions } from '../transport/registry/index.ts';
import { optString, type OptionSpec, type OptionValues } from './command.ts';

export const registryOptionSpecs: OptionSpec = {
  authfile: { type: 'string' },
  creds: { type: 'string' },
  'tls-verify': { type: 'string' },
  'cert-dir': { type: 'string' },
  'registries-conf': { type: 'string' },
};

export const copyRegistryOptionSpecs: OptionSpec = {
  ...registryOptionSpecs,
  'src-creds': { type: 'string' },
  'dest-creds': { type: 'string' },
  'src-tls-verify': { type: 'string' },
  'dest-tls-verify': { type: 'string' },
};

export const registryOptionsHelp =
  '  --authfile FILE         credentials file (containers-auth.json(5)); default: the containers/docker locations\n' +
  '  --creds USER:PASSWORD   credentials for the registry (--src-creds/--dest-creds for one side of a copy)\n' +
  '  --tls-verify=false      accept any certificate and allow plain http (--src-/--dest-tls-verify for one side)\n' +
  '  --cert-dir DIR          use DIR/*.crt (CAs) and DIR/*.cert + *.key (client) for the registry, as skopeo does,\n' +
  '                          instead of /etc/containers/certs.d/HOST:PORT/\n' +
  '  --registries-conf FILE  registries.conf to use instead of /etc/containers/registries.conf';

class UsageError extends TiuError {
  constructor(message: string) {
    super('USAGE', message);
  }
}

function tlsVerify(v: string | undefined, name: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (v === 'true') return true;
  if (v === 'false') return false;
  throw new UsageError(`--${name} must be true or false, not ${JSON.stringify(v)}`);
}

/** RegistryClientOptions from parsed options; `side` picks the --src- or --dest- variants where given. */
export function registryOptions(options: OptionValues, side?: 'src' | 'dest'): RegistryClientOptions {
  const o: RegistryClientOptions = {};
  const authFile = optString(options, 'authfile');
  if (authFile) o.authFile = authFile;
  const creds = (side && optString(options, `${side}-creds`)) ?? optString(options, 'creds');
  if (creds) o.creds = creds;
  const tv =
    (side ? tlsVerify(optString(options, `${side}-tls-verify`), `${side}-tls-verify`) : undefined) ??
    tlsVerify(optString(options, 'tls-verify'), 'tls-verify');
  if (tv !== undefined) o.tlsVerify = tv;
  const certDir = optString(options, 'cert-dir');
  if (certDir) o.certDir = certDir;
  const conf = optString(options, 'registries-conf');
  if (conf) o.registriesConf = conf;
  return o;
}
