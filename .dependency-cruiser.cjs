/**
 * The import rules of src/ (docs/DEVELOPING.md, "Import rules"): no cycles, and top-level
 * folders import only folders below them in LAYERS. src/errors.ts (with its code registry
 * src/error-codes.ts) and src/format.ts are shared by every layer and import nothing of tiu
 * but each other. A top-level folder or file that is not named here
 * is an error until it is given its place.
 */
/** Bottom to top: a folder may import the folders before it, never those after it. */
const LAYERS = [
  'util', // small helpers: bounded pools, atomic writes, in-process queues
  'oci', // media types, digests, references, schema checks of untrusted JSON
  'host', // the only code that runs programs
  'layer', // layer format: tar, TOC, zstd frames, tar-split
  'patch', // delta artifact format: zstd patch-from codec, delta index
  'content', // Targets: memory, OCI layout, oci-archive, graph walking, locks
  'transport', // registry client, reference -> Target
  'trust', // keys, signing, verification, policy
  'copy', // copy() between Targets
  'bundle', // tiu build
  'deploy', // everything the device does
  'agent', // systemd entry points
  'cli', // argv -> command
];
const SHARED = ['errors.ts', 'error-codes.ts', 'format.ts'];
const alt = (names) => names.map((n) => n.replace(/\./g, '\\.')).join('|');

const layerRules = LAYERS.slice(0, -1).map((layer, i) => ({
  name: `layer-${layer}`,
  comment: `src/${layer}/ may import only ${LAYERS.slice(0, i).join(', ') || 'no other folder'} (and src/errors.ts, src/format.ts)`,
  severity: 'error',
  from: { path: `^src/${layer}/` },
  to: { path: `^src/(${alt(LAYERS.slice(i + 1))})/` },
}));

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'a cycle ties modules into one: split out what both need',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
    ...layerRules,
    {
      name: 'shared-imports-nothing',
      comment:
        'src/errors.ts, src/error-codes.ts and src/format.ts are below every layer: they import nothing of tiu but each other',
      severity: 'error',
      from: { path: `^src/(${alt(SHARED)})$` },
      to: { path: '^src/', pathNot: `^src/(${alt(SHARED)})$` },
    },
    {
      name: 'unplaced-module',
      comment:
        'every top-level folder of src/ has its place in LAYERS (.dependency-cruiser.cjs), every top-level file is shared',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: `^src/(?!(${alt(LAYERS)})/|(${alt(SHARED)})$)` },
    },
    {
      name: 'unplaced-importer',
      comment: 'every top-level folder of src/ has its place in LAYERS (.dependency-cruiser.cjs)',
      severity: 'error',
      from: { path: `^src/(?!(${alt(LAYERS)})/|(${alt(SHARED)})$)` },
      to: {},
    },
    {
      name: 'no-tests-in-src',
      comment: 'production code does not import test or bench code',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(test|bench)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
