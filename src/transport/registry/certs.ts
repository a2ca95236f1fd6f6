/**
 * certs.d: per-registry TLS material, read the way the containers tools read it:
 * <dir>/<host[:port]>/*.crt are CAs; *.cert with the *.key of the same base name is a client
 * certificate. The directories default to /etc/containers/certs.d and /etc/docker/certs.d.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

export const DEFAULT_CERT_DIRS = ['/etc/containers/certs.d', '/etc/docker/certs.d'];

export interface CertMaterial {
  ca: Buffer[];
  cert?: Buffer;
  key?: Buffer;
  /** Files that were read, for messages. */
  files: string[];
}

export async function loadCerts(hostport: string, dirs: readonly string[] = DEFAULT_CERT_DIRS): Promise<CertMaterial> {
  const out: CertMaterial = { ca: [], files: [] };
  const names = [hostport];
  if (hostport.endsWith(':443')) names.push(hostport.slice(0, -4));
  for (const dir of dirs) {
    for (const name of names) {
      const d = join(dir, name);
      let entries: string[];
      try {
        entries = (await readdir(d)).sort();
      } catch {
        continue;
      }
      for (const f of entries) {
        if (f.endsWith('.crt')) {
          out.ca.push(await readFile(join(d, f)));
          out.files.push(join(d, f));
        } else if (f.endsWith('.cert') && !out.cert) {
          const keyName = f.slice(0, -'.cert'.length) + '.key';
          if (entries.includes(keyName)) {
            out.cert = await readFile(join(d, f));
            out.key = await readFile(join(d, keyName));
            out.files.push(join(d, f));
          }
        }
      }
    }
  }
  return out;
}
