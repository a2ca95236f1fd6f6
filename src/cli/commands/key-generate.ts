/** tiu key generate: a cosign-compatible key pair (PREFIX.key encrypted, PREFIX.pub). */
import { type Command, optBool, optString } from '../command.ts';
import { writeKeyPair } from '../../trust/keyfiles.ts';
import { getNewPassphrase } from '../../trust/passphrase.ts';

const command: Command = {
  name: 'key generate',
  summary: 'create a cosign-compatible ECDSA P-256 key pair for signing bundles',
  usage: 'tiu key generate [--output-key-prefix PREFIX] [--force]',
  help:
    'Writes PREFIX.key (encrypted like cosign: scrypt + nacl secretbox) and PREFIX.pub (PEM), both mode 0600.\n' +
    'PREFIX defaults to "cosign". The passphrase comes from COSIGN_PASSWORD or TIU_PASSWORD, else it is asked on the terminal.',
  options: {
    'output-key-prefix': { type: 'string' },
    force: { type: 'boolean' },
  },
  positionals: [0, 0],
  async run(_pos, options, out) {
    const prefix = optString(options, 'output-key-prefix') ?? 'cosign';
    const passphrase = await getNewPassphrase();
    const written = await writeKeyPair(prefix, passphrase, optBool(options, 'force'));
    out.result(`Private key written to ${written.privateKey}\nPublic key written to ${written.publicKey}`, written);
  },
};

export default command;
