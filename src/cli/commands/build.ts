import type { Command } from '../command.ts';
import { annotationOption, optAnnotations, optString, optStrings } from '../command.ts';
import { buildBundle, classifySource, type BuildSource } from '../../bundle/build.ts';
import { BuildError } from '../../bundle/errors.ts';
import { isDigest } from '../../oci/digest.ts';
import { makeDeltas, type DeltaResult } from '../../bundle/delta.ts';
import { openReference, probeDestination, resolveRoot, type OpenedReference } from '../../transport/resolve.ts';
import { parseReference } from '../../oci/reference.ts';
import { deltaJson, describeDelta } from '../delta-output.ts';
import { humanSize, shortDigest } from '../../format.ts';
import { registryOptions } from '../registry-options.ts';

const command: Command = {
  name: 'build',
  summary: 'Build a bundle (an OCI image with a table of contents) from an OS tree and push it',
  usage:
    'tiu build SOURCE --tag DEST [--compression zstd|gzip] [--layers N] [--exclude PATH]... [--annotation K=V]... [--arch ARCH] [--delta-from REF]... [--json]',
  help:
    'SOURCE: a directory, a tar archive (.tar, .tar.gz, .tar.xz, .tar.zst, .tbz: as kiwi writes them),\n' +
    '  or an image reference (docker://..., oci:..., oci-archive:..., dir:..., docker-archive:...,\n' +
    '  containers-storage:...) to re-layer.\n' +
    'DEST: where to push: docker://HOST/REPO:TAG, oci:/PATH:TAG, oci-archive:/FILE.tar:TAG, dir:/PATH,\n' +
    '  docker-archive:/FILE.tar[:NAME:TAG] (as `docker load` reads it; layers stored uncompressed).\n' +
    'Left out of every bundle: the contents of /run /tmp /proc /sys /dev /.snapshots /home /root /opt\n' +
    '  /srv /usr/local /boot/writable /boot/grub2/<arch>. /var content moves to /usr/share/factory/var\n' +
    '  (with tmpfiles.d lines); /etc is also kept as /usr/lib/tiu/etc.\n' +
    'Reproducible: the same tree gives the same digest. SOURCE_DATE_EPOCH sets the created time\n' +
    '  (default: the newest mtime in the tree); file mtimes are kept as they are.\n' +
    '  --compression zstd|gzip  zstd:chunked layers with a table of contents (default), or plain gzip\n' +
    '  --layers N               at most N layers (default 8), split by a stable rule\n' +
    '  --exclude PATH           leave PATH and everything below it out (repeatable)\n' +
    '  --annotation, -a K=V     add a manifest annotation (repeatable)\n' +
    "  --arch ARCH              OCI architecture (default: this machine's)\n" +
    '  --delta-from REF         after the push, make a delta artifact from image REF to the new one\n' +
    '                           and attach it as a referrer (repeatable; see `tiu delta --help`)\n',
  registry: 'copy',
  options: {
    tag: { type: 'string' },
    compression: { type: 'string' },
    layers: { type: 'string' },
    exclude: { type: 'string', multiple: true },
    ...annotationOption,
    arch: { type: 'string' },
    'delta-from': { type: 'string', multiple: true },
  },
  positionals: [1, 1],
  async run([sourceInput], options, out) {
    const destInput = optString(options, 'tag');
    if (!destInput)
      throw new BuildError('BUILD_OPTION_INVALID', '--tag DEST is required (e.g. --tag oci:/srv/bundles:latest)');
    const compression = optString(options, 'compression') ?? 'zstd';
    if (compression !== 'zstd' && compression !== 'gzip')
      throw new BuildError(
        'BUILD_OPTION_INVALID',
        `--compression must be zstd or gzip, got ${JSON.stringify(compression)}`,
      );
    const layersText = optString(options, 'layers');
    const layers = layersText === undefined ? undefined : Number(layersText);
    if (layers !== undefined && !Number.isInteger(layers))
      throw new BuildError(
        'BUILD_OPTION_INVALID',
        `--layers must be a whole number, got ${JSON.stringify(layersText)}`,
      );
    const annotations = optAnnotations(
      options,
      (v) => new BuildError('BUILD_OPTION_INVALID', `--annotation ${JSON.stringify(v)} is not KEY=VALUE`),
    );

    let src: OpenedReference | undefined;
    let dst: OpenedReference | undefined;
    let ok = false;
    try {
      // The destination first: a wrong one must fail before the layers are compressed.
      dst = await openReference(destInput, { forWrite: true, registry: registryOptions(options, 'dest') });
      const tag = dst.name ?? 'latest';
      if (isDigest(tag)) throw new BuildError('BUILD_OPTION_INVALID', `--tag ${destInput} names a digest; give a tag`);
      for (const fromInput of optStrings(options, 'delta-from')) parseReference(fromInput);
      await probeDestination(dst);
      const kind = await classifySource(sourceInput!);
      let source: BuildSource;
      if (kind === 'image') {
        src = await openReference(sourceInput!, { registry: registryOptions(options, 'src') });
        // dir: and docker-archive: name no tag: their one image (or the archive's only one).
        const oneImage = src.ref.transport === 'dir' || src.ref.transport === 'docker-archive';
        const reference = src.name ?? (oneImage ? (await resolveRoot(src)).digest : 'latest');
        source = { kind: 'image', target: src.target, reference };
      } else {
        source = { kind, path: sourceInput! };
      }
      const r = await buildBundle(source, dst.target, tag, {
        compression,
        layers,
        exclude: optStrings(options, 'exclude'),
        annotations,
        architecture: optString(options, 'arch'),
        onProgress: (line) => out.info(line),
      });
      // Before close: an oci-archive destination is written out on close.
      const deltas: DeltaResult[] = [];
      for (const fromInput of optStrings(options, 'delta-from')) {
        const from = await openReference(fromInput, { registry: registryOptions(options, 'src') });
        try {
          out.info(`delta from ${fromInput}`);
          const target = dst.target;
          deltas.push(
            ...(await makeDeltas(
              { target: from.target, root: await resolveRoot(from) },
              { target, root: r.descriptor },
              { onProgress: (line) => out.info(line) },
            )),
          );
        } finally {
          await from.target.close?.().catch(() => undefined);
        }
      }
      await dst.target.close?.();
      ok = true;
      const total = r.layers.reduce((n, l) => n + l.descriptor.size, 0);
      out.info(
        `${r.entries} entries in ${r.layers.length} layers, ${humanSize(total)} (${compression}); manifest ${shortDigest(r.descriptor.digest)}`,
      );
      for (const d of deltas) out.info(describeDelta(d));
      out.result(r.descriptor.digest, {
        digest: r.descriptor.digest,
        mediaType: r.descriptor.mediaType,
        size: r.descriptor.size,
        destination: destInput,
        tag,
        entries: r.entries,
        compression,
        layers: r.layers.map((l) => ({
          digest: l.descriptor.digest,
          size: l.descriptor.size,
          diffId: l.diffId,
          entries: l.entries,
        })),
        annotations: r.manifest.annotations,
        deltas: deltas.map(deltaJson),
      });
    } finally {
      await src?.target.close?.().catch(() => undefined);
      if (dst && !ok) {
        const t = dst.target as { discard?: () => Promise<void> };
        if (t.discard) await t.discard().catch(() => undefined);
        else await dst.target.close?.().catch(() => undefined);
      }
    }
  },
};
export default command;
