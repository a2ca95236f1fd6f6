/**
 * Per-registry TLS material, read the way the containers tools read it. In a directory, *.crt
 * are CAs (added to the system's) and *.cert with the *.key of the same base name is a client
 * certificate; a *.cert without its *.key, or a *.key without its *.cert, is an error.
 *   - certs.d trees (the default, /etc/containers/certs.d and /etc/docker/certs.d): the
 *     directory <dir>/<host[:port]>/ of the registry;
 *   - skopeo's --cert-dir DIR: DIR itself, a flat folder used for whichever registry is
 *     reached, instead of the certs.d trees.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TiuError } from '../../errors.ts';

export const DEFAULT_CERT_DIRS = ['/etc/containers/certs.d', '/etc/docker/certs.d'];

export interface CertMaterial {
  ca: Buffer[];
  cert?: Buffer;
  key?: Buffer;
  /** Files that were read, for messages. */
  files: string[];
}

/** Adds the material of one directory to `out`; a directory that does not exist adds nothing. */
async function readCertDir(d: string, out: CertMaterial): Promise<void> {
  let entries: string[];
  try {
    entries = (await readdir(d)).sort();
  } catch (e) {
    if (['ENOENT', 'ENOTDIR'].includes((e as NodeJS.ErrnoException).code ?? '')) return;
    throw new TiuError('CONFIG_INVALID', `certificate directory ${d} can't be read: ${(e as Error).message}`, {
      path: d,
    });
  }
  for (const f of entries) {
    if (f.endsWith('.crt')) {
      out.ca.push(await readFile(join(d, f)));
      out.files.push(join(d, f));
    } else if (f.endsWith('.cert')) {
      const keyName = f.slice(0, -'.cert'.length) + '.key';
      if (!entries.includes(keyName)) {
        throw new TiuError('CONFIG_INVALID', `client certificate ${join(d, f)} has no key ${keyName}`, { path: d });
      }
      // One client certificate a registry: the first by name.
      if (out.cert) continue;
      out.cert = await readFile(join(d, f));
      out.key = await readFile(join(d, keyName));
      out.files.push(join(d, f));
    } else if (f.endsWith('.key') && !entries.includes(f.slice(0, -'.key'.length) + '.cert')) {
      throw new TiuError('CONFIG_INVALID', `key ${join(d, f)} has no client certificate`, { path: d });
    }
  }
}

/** The material for `hostport` from certs.d trees (`<dir>/<host:port>/`, and `<dir>/<host>/` for port 443). */
export async function loadCerts(hostport: string, dirs: readonly string[] = DEFAULT_CERT_DIRS): Promise<CertMaterial> {
  const out: CertMaterial = { ca: [], files: [] };
  const names = [hostport];
  if (hostport.endsWith(':443')) names.push(hostport.slice(0, -4));
  for (const dir of dirs) for (const name of names) await readCertDir(join(dir, name), out);
  return out;
}

/** The material of a flat --cert-dir, the same for every registry. */
export async function loadFlatCerts(dir: string): Promise<CertMaterial> {
  const out: CertMaterial = { ca: [], files: [] };
  await readCertDir(dir, out);
  return out;
}
