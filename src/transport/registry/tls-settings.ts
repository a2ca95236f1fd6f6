/** A registry host's TLS settings (certs.ts reads them from certs.d), for both HTTP paths. */
export interface TlsSettings {
  /** Extra CAs (PEM) trusted on top of the system roots. */
  ca?: Buffer[];
  cert?: Buffer;
  key?: Buffer;
  /** false: accept any certificate (--tls-verify=false). */
  verify: boolean;
}
