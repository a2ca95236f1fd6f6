/**
 * Starts and stops a real distribution registry (Debian's docker-registry) on 127.0.0.1 for a
 * test. Storage lives in a temporary directory that stop() removes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { atExit } from './at-exit.ts';
import { freePort } from './ports.ts';

export interface RegistryOptions {
  /** htpasswd file (bcrypt entries) for Basic auth. */
  htpasswd?: string;
  /** TLS certificate and key files (PEM); `clientcas`: require client certificates from these CAs. */
  tls?: { certificate: string; key: string; clientcas?: string[] };
  /** Token auth: the registry's `auth.token` section. */
  token?: { realm: string; service: string; issuer: string; rootcertbundle: string };
}

export interface RunningRegistry {
  /** host:port, e.g. 127.0.0.1:38211 */
  host: string;
  port: number;
  /** http(s)://host:port */
  url: string;
  storage: string;
  stop(): Promise<void>;
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<RunningRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'tiu-registry-'));
  // A test that never reaches stop() (a throwing after hook, SIGTERM) still leaves nothing.
  const forgetDir = atExit(() => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const storage = join(dir, 'data');
  const lines = [
    'version: 0.1',
    'log: { level: error, accesslog: { disabled: true } }',
    'storage:',
    `  filesystem: { rootdirectory: ${JSON.stringify(storage)} }`,
    '  delete: { enabled: true }',
    'http:',
    `  addr: 127.0.0.1:${port}`,
  ];
  if (opts.tls) {
    const cas = opts.tls.clientcas?.length
      ? `, clientcas: [${opts.tls.clientcas.map((c) => JSON.stringify(c)).join(', ')}]`
      : '';
    lines.push(
      `  tls: { certificate: ${JSON.stringify(opts.tls.certificate)}, key: ${JSON.stringify(opts.tls.key)}${cas} }`,
    );
  }
  if (opts.htpasswd) {
    lines.push('auth:', `  htpasswd: { realm: tiu-test, path: ${JSON.stringify(opts.htpasswd)} }`);
  } else if (opts.token) {
    const t = opts.token;
    lines.push(
      'auth:',
      `  token: { realm: ${JSON.stringify(t.realm)}, service: ${JSON.stringify(t.service)}, issuer: ${JSON.stringify(t.issuer)}, rootcertbundle: ${JSON.stringify(t.rootcertbundle)} }`,
    );
  }
  const config = join(dir, 'config.yml');
  await writeFile(config, lines.join('\n') + '\n');
  const child: ChildProcess = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  const forgetChild = atExit(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const scheme = opts.tls ? 'https' : 'http';
  const url = `${scheme}://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    forgetChild();
    await rm(dir, { recursive: true, force: true });
    forgetDir();
  };
  // Ready when the port accepts connections (any HTTP answer, 401 included).
  const deadline = Date.now() + 15000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`docker-registry exited (${child.exitCode}): ${stderr}`);
    }
    const up = await new Promise<boolean>((resolve) => {
      import('node:net').then(
        ({ connect }) => {
          const s = connect(port, '127.0.0.1');
          s.once('connect', () => {
            s.destroy();
            resolve(true);
          });
          s.once('error', () => resolve(false));
        },
        () => resolve(false),
      );
    });
    if (up) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`docker-registry did not listen on ${port}: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { host: `127.0.0.1:${port}`, port, url, storage, stop };
}
