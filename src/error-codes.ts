/**
 * The registry of every error code tiu raises: what it means, what the user does about it,
 * whether a later retry may succeed by itself (`transient`), and the CLI's exit status when it
 * is not 1. `ErrorCode` is derived from it, so a code that is not here does not type-check;
 * docs/errors.md is generated from it (scripts/errors-doc.ts).
 *
 * Naming order: SUBJECT_CONDITION, the thing first, then what is wrong with it
 * (`TAR_INVALID`, `CONFIG_INVALID`, `PATH_UNSAFE`, `REGISTRY_TIMEOUT`, `KERNEL_MISSING`).
 * Conditions: `_INVALID` (malformed), `_MISSING` / `_NOT_FOUND` (absent), `_MISMATCH` (does
 * not match what was pinned), `_UNSUPPORTED` (well-formed, but not something tiu does),
 * `_TOO_LARGE`, `_FAILED` (a step or program failed). A few codes without a subject say
 * something about the whole run: `USAGE`, `ABORTED`, `INTERNAL`.
 */

export interface ErrorCodeInfo {
  /** One line: what went wrong. */
  readonly meaning: string;
  /** What the user does about it. */
  readonly action: string;
  /** A retry later may succeed with nothing changed by hand: the network, a registry's load, space, a lock. */
  readonly transient: boolean;
  /** The CLI's exit status; 1 when not given. */
  readonly exit?: number;
}

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
/** No accepted signature is unexpired while tiu.conf requires one: monitoring tells a frozen mirror apart. */
export const EXIT_STALE = 4;
/** The offered image is older than the one the device runs or has pending. */
export const EXIT_DOWNGRADE = 5;

export const ERROR_CODES = {
  // the whole run
  USAGE: {
    meaning: 'the command line is wrong: an unknown command or option, a missing or extra argument, a bad value',
    action: 'run `tiu COMMAND --help` and correct the command line',
    transient: false,
    exit: EXIT_USAGE,
  },
  ABORTED: {
    meaning: 'the operation was stopped by a signal (Ctrl-C, systemd stopping the unit) or its caller',
    action: 'run it again; an update goes on from what it had downloaded and verified',
    transient: true,
  },
  INTERNAL: {
    meaning: 'an error tiu did not expect (a bug); the CLI prints the stack with TIU_DEBUG=1',
    action: 'report it with the output of the command run with TIU_DEBUG=1',
    transient: false,
  },

  // digests, references, manifests (src/oci, src/content)
  DIGEST_INVALID: {
    meaning: 'a string that should be a digest (`sha256:<64 hex>`) is not one',
    action: 'check the digest in the reference or the image',
    transient: false,
  },
  DIGEST_MISMATCH: {
    meaning: 'content does not hash to the digest that names it (damaged in transit or in storage, or tampered with)',
    action: 'retry from another source; if it persists, the registry or layout holds damaged content',
    transient: false,
  },
  SIZE_MISMATCH: {
    meaning: 'content is shorter or longer than the size its descriptor declares',
    action: 'retry from another source; if it persists, the registry or layout holds damaged content',
    transient: false,
  },
  MEDIA_TYPE_MISMATCH: {
    meaning: 'content has another media type than the descriptor that points at it',
    action: 'rebuild or re-push the image; the manifest and its content disagree',
    transient: false,
  },
  CONTENT_TOO_LARGE: {
    meaning: 'a JSON document (config, signature, index) is larger than tiu reads',
    action: 'check the image: such documents are small; a huge one is damaged or hostile',
    transient: false,
  },
  CONTENT_NOT_FOUND: {
    meaning: 'a blob, manifest, tag or file a target should hold is not there',
    action: 'check the reference (tag, digest, path) and that the image was pushed completely',
    transient: false,
  },
  MANIFEST_INVALID: {
    meaning: 'a manifest or index is not valid OCI or Docker JSON',
    action: 'rebuild or re-push the image',
    transient: false,
  },
  MANIFEST_TOO_LARGE: {
    meaning: 'a manifest or index is larger than the 4 MiB tiu accepts',
    action: 'check the image: a manifest that large is damaged or hostile',
    transient: false,
  },
  IMAGE_CONFIG_INVALID: {
    meaning: "an image's config blob is not a valid OCI image config, or is too large",
    action: 'rebuild the image',
    transient: false,
  },
  REFERENCE_INVALID: {
    meaning: 'an image reference (`docker://`, `oci:`, …) cannot be parsed',
    action: 'correct the reference: TRANSPORT:NAME[:TAG][@DIGEST]',
    transient: false,
  },
  REFERENCE_AMBIGUOUS: {
    meaning: 'a layout or archive holds several images and the reference names none of them',
    action: 'name one with :TAG or @DIGEST',
    transient: false,
  },
  SHORT_NAME_UNRESOLVED: {
    meaning: 'a short image name (no registry) has no alias and registries.conf lists no unqualified-search-registries',
    action:
      'name the registry (docker://HOST/REPO:TAG), or add an alias or unqualified-search-registries to registries.conf',
    transient: false,
  },
  SHORT_NAME_AMBIGUOUS: {
    meaning:
      'a short image name could come from several unqualified-search-registries and short-name-mode is enforcing (podman would ask; tiu does not), or it names a destination',
    action:
      'name the registry, add an alias to registries.conf, or set short-name-mode = "permissive" to take the first that has the image',
    transient: false,
  },
  REFERENCE_MISSING: {
    meaning: 'no image is named: no reference given and none configured, or a source that needs a tag or digest',
    action: 'give a reference with a tag or digest, or set `image` in /etc/tiu/tiu.conf',
    transient: false,
  },
  TAG_INVALID: {
    meaning: 'a tag is not a valid OCI tag',
    action: 'use at most 128 characters of [A-Za-z0-9_.-], not starting with . or -',
    transient: false,
  },
  RANGE_INVALID: {
    meaning: 'a byte range lies outside the blob it reads',
    action: 'check the image: its table of contents points outside its layer',
    transient: false,
  },
  RANGE_UNSUPPORTED: {
    meaning: 'a source does not serve byte ranges, which the file delta needs',
    action: 'none needed: `--transfer auto` downloads whole layers instead; use a registry that honours Range',
    transient: false,
  },
  LAYOUT_INVALID: {
    meaning: 'a directory is not a usable OCI layout (oci-layout, index.json)',
    action: 'check the path, or create the layout with `tiu copy`',
    transient: false,
  },
  ARCHIVE_INVALID: {
    meaning: 'a file is not a usable oci-archive (a tar of an OCI layout)',
    action: 'check the file, or create it with `tiu copy … oci-archive:FILE`',
    transient: false,
  },
  TARGET_CLOSED: {
    meaning: 'an oci-archive target was used after it was closed (a bug)',
    action: 'report it',
    transient: false,
  },
  LOCK_TIMEOUT: {
    meaning: 'a lock on a layout or cache was held by another process for too long',
    action: 'wait for the other tiu to finish, then run again',
    transient: true,
  },
  DIR_INVALID: {
    meaning:
      'a `dir:` image cannot be used: no manifest.json, an unknown version file, a symlink or non-regular file, a digest other than sha256, or a destination that is a non-empty directory but no dir: image',
    action: 'name a dir: image written by skopeo or tiu, or an empty or new directory as a destination',
    transient: false,
  },
  DOCKER_ARCHIVE_INVALID: {
    meaning:
      'a `docker-archive:` (docker save) file cannot be read: no or bad manifest.json, a missing config or layer, layers and diff_ids that disagree, a compressed layer, an entry leaving the archive',
    action: 'write the archive again with `docker save` or `skopeo copy … docker-archive:`',
    transient: false,
  },
  CONVERSION_REFUSED: {
    meaning:
      'the destination (`oci:`, `oci-archive:`) takes only OCI manifests, and converting this Docker image would change its digests: refused because of --preserve-digests, or because the image has referrers (signatures) that name the old digest',
    action:
      'copy to a registry (docker://) to keep the Docker manifest, or copy without --preserve-digests / --referrers',
    transient: false,
  },
  CONVERSION_UNSUPPORTED: {
    meaning:
      'a Docker image cannot be converted to OCI (a layer media type with no OCI counterpart, a config time that is not RFC 3339)',
    action: 'copy it to a registry (docker://) instead, or rebuild the image in OCI format',
    transient: false,
  },
  COPY_FAILED: {
    meaning:
      'a copy between two targets failed; the cause code (`[COPY_FAILED <- CAUSE]`, `error.cause.code`) says why',
    action: 'see the cause code',
    transient: false,
  },

  // registries (src/transport)
  REGISTRY_UNREACHABLE: {
    meaning: 'a registry could not be reached (DNS, connection refused or reset) after the retries',
    action: 'check the network and the registry host; run again later',
    transient: true,
  },
  REGISTRY_BAD_RESPONSE: {
    meaning:
      'a registry (or the storage it redirected to) sent an HTTP response tiu refuses: headers over the limit or malformed, Content-Length with Transfer-Encoding, differing Content-Lengths, a bad chunk size, a body longer than it said, or a range that is not the one asked for',
    action:
      'the registry, a mirror or a proxy in between is broken or hostile: report it to whoever runs it, or use another mirror',
    transient: false,
  },
  REGISTRY_TIMEOUT: {
    meaning: 'a registry did not answer in time after the retries',
    action: 'check the network; run again later',
    transient: true,
  },
  REGISTRY_TOO_SLOW: {
    meaning: 'a transfer stayed below the minimum throughput for too long, or passed its deadline',
    action: 'run again later, or lower `min-speed` / raise `speed-time` for slow links',
    transient: true,
  },
  REGISTRY_UNAVAILABLE: {
    meaning: 'a registry answered 5xx',
    action: 'run again later',
    transient: true,
  },
  REGISTRY_TOO_MANY_REQUESTS: {
    meaning: 'a registry answered 429 (rate limit) after the retries',
    action: 'run again later, or log in for a higher limit',
    transient: true,
  },
  REGISTRY_ERROR: {
    meaning: 'a registry answered with a status the protocol does not allow at that point',
    action: 'check the registry; the message has its status and answer',
    transient: false,
  },
  REGISTRY_UNAUTHORIZED: {
    meaning: 'a registry refused the credentials, or needs some (401); the message names the auth files consulted',
    action: 'log in (auth.json, --creds, --authfile) with an account that may read or write the repository',
    transient: false,
  },
  REGISTRY_DENIED: {
    meaning: 'a registry denied the request (403)',
    action: "check the account's rights on the repository",
    transient: false,
  },
  REGISTRY_BLOCKED: {
    meaning: 'registries.conf blocks this registry',
    action: 'use another registry, or unblock it in registries.conf',
    transient: false,
  },
  TLS_ERROR: {
    meaning: 'TLS with a registry failed: an untrusted certificate or a server that does not speak TLS',
    action: 'put the CA into /etc/containers/certs.d/HOST/ca.crt, or mark the registry insecure in registries.conf',
    transient: false,
  },
  REFERRERS_CONFLICT: {
    meaning: 'the referrers tag (`sha256-<hex>`) holds something that is not an index, or kept changing',
    action: 'remove the foreign tag from the repository, or run again',
    transient: false,
  },
  CONFIG_INVALID: {
    meaning:
      'a configuration file (tiu.conf, registries.conf, auth.json) or certificate directory is malformed or missing; the message names it',
    action: 'correct the file at the place the message names',
    transient: false,
  },
  CREDENTIALS_INVALID: {
    meaning: 'credentials given on the command line or by a helper are malformed',
    action: 'give USER:PASSWORD, or fix the credential helper',
    transient: false,
  },

  // signatures and policy (src/trust)
  SIGNATURE_MISSING: {
    meaning: 'the image has no signature',
    action: 'sign it (`tiu sign`) and copy it with --referrers',
    transient: false,
  },
  SIGNATURE_INVALID: {
    meaning: 'no signature verifies with a trusted key: altered, or signed by another key',
    action: 'check the image source and the keys in policy.json',
    transient: false,
  },
  SIGNATURE_DIGEST_MISMATCH: {
    meaning: 'a valid signature names another manifest digest (a replayed signature)',
    action: "sign this image; do not reuse another image's signature",
    transient: false,
  },
  SIGNATURE_PAYLOAD_INVALID: {
    meaning: 'a validly signed payload is not a cosign simple-signing payload',
    action: 'sign the image with `tiu sign` or cosign',
    transient: false,
  },
  IDENTITY_MISMATCH: {
    meaning: "a signature's docker-reference is not accepted by the policy's signedIdentity",
    action: 'sign for the repository the device pulls from, or adjust signedIdentity in policy.json',
    transient: false,
  },
  CERT_INVALID: {
    meaning:
      "a keyless signature's certificate or chain annotation cannot be parsed (not PEM X.509, too large, too many)",
    action: 'the signature is damaged or not made by cosign: sign the image again',
    transient: false,
  },
  CERT_UNTRUSTED: {
    meaning: "a signature's certificate does not chain to the policy's Fulcio CA, or lacks code-signing usage",
    action: "check fulcio.caPath/caData in policy.json against the CA that issued the signer's certificate",
    transient: false,
  },
  CERT_VALIDITY_MISMATCH: {
    meaning:
      "the transparency log's integrated time lies outside the validity of the signing certificate (or its chain)",
    action: 'the signature was logged when its certificate was not valid: sign the image again',
    transient: false,
  },
  OIDC_ISSUER_MISMATCH: {
    meaning: "the certificate's OIDC issuer extension differs from fulcio.oidcIssuer (or is missing)",
    action: 'sign from the identity provider the policy names, or correct fulcio.oidcIssuer',
    transient: false,
  },
  CERT_SUBJECT_MISMATCH: {
    meaning: "the certificate's SAN email (or URI) differs from fulcio.subjectEmail (subjectURI)",
    action: 'sign as the identity the policy names, or correct fulcio.subjectEmail / subjectURI',
    transient: false,
  },
  TLOG_MISSING: {
    meaning:
      'the policy asks for a Rekor entry (rekorPublicKey*) and the signature carries no dev.sigstore.cosign/bundle (a sigstore bundle: no tlog entry with a signed entry timestamp)',
    action: 'sign with the transparency log (cosign sign with tlog upload), or drop rekorPublicKey* from the policy',
    transient: false,
  },
  TLOG_UNSUPPORTED: {
    meaning:
      "the signature's only log entries are Rekor v2 entries: they carry no signed entry timestamp (their time comes from an RFC 3161 timestamp authority), and containers-policy.json names no timestamp authority to trust",
    action: 'sign against a Rekor v1 log (an entry with an inclusion promise, i.e. a signed entry timestamp)',
    transient: false,
  },
  TLOG_INVALID: {
    meaning:
      "the signature's Rekor SET does not verify under the policy's Rekor key(s), or its entry does not match the signature, payload or certificate",
    action:
      'check rekorPublicKey* in policy.json against the log that signed; a mismatching entry means a damaged or forged signature',
    transient: false,
  },
  IDENTITY_REQUIRED: {
    meaning: 'an image without a docker name (an OCI layout) is signed without --identity',
    action: 'give --identity REGISTRY/REPOSITORY[:TAG]',
    transient: false,
  },
  // signature freshness and downgrade protection (src/trust/freshness.ts, src/deploy/update/downgrade.ts)
  SIGNATURE_EXPIRED: {
    meaning:
      'tiu.conf requires an unexpired signature (require-signature-expiry) and no signature the policy accepted carries an expiry in the future (a frozen mirror, or CI stopped re-signing)',
    action:
      'check where the device pulls from; re-sign the current image with `tiu sign --expires DURATION`; the device stays on its system',
    transient: false,
    exit: EXIT_STALE,
  },
  DOWNGRADE: {
    meaning:
      'the offered image is older (signed created time or version) than the image the device runs or has pending: a rollback attack, or an old tag',
    action:
      'check where the device pulls from; to install an older image on purpose, `tiu update --allow-downgrade`; `tiu rollback` goes back to a local snapshot',
    transient: false,
    exit: EXIT_DOWNGRADE,
  },
  POLICY_REJECTED: {
    meaning: 'policy.json rejects images from this source',
    action: 'pull from a source the policy accepts, or change the policy',
    transient: false,
  },
  POLICY_INVALID: {
    meaning: 'policy.json is malformed',
    action: 'correct policy.json at the place the message names',
    transient: false,
  },
  POLICY_NOT_FOUND: {
    meaning: 'there is no policy.json where one was looked for',
    action: 'install /etc/containers/policy.json, or give --policy',
    transient: false,
  },
  POLICY_UNSUPPORTED: {
    meaning: 'policy.json has a requirement tiu cannot check (GPG signedBy, sigstoreSigned pki)',
    action: 'use sigstoreSigned with a public key or fulcio',
    transient: false,
  },
  KEY_INVALID: {
    meaning: 'a key file is not a key tiu can read',
    action: 'check the file; generate one with `tiu key generate`',
    transient: false,
  },
  KEY_UNSUPPORTED: {
    meaning: 'a readable key of a kind, cipher or parameters tiu does not sign or verify with',
    action: 'use a key made by `tiu key generate` or `cosign generate-key-pair`',
    transient: false,
  },
  KEY_EXISTS: {
    meaning: '`tiu key generate` would overwrite a key file',
    action: 'choose another name, or give --force',
    transient: false,
  },
  KEY_WRITE_FAILED: {
    meaning:
      '`tiu key generate` cannot create a key file: its directory is missing or not writable, or the disk is full',
    action: 'create the directory named by --output-key-prefix, or choose a writable one',
    transient: false,
  },
  PASSPHRASE_WRONG: {
    meaning: 'the passphrase does not open the encrypted private key',
    action: 'give the right passphrase (COSIGN_PASSWORD, TIU_PASSWORD or the prompt)',
    transient: false,
  },
  PASSPHRASE_REQUIRED: {
    meaning: 'the private key is encrypted and there is no passphrase and no terminal to ask on',
    action: 'set COSIGN_PASSWORD or TIU_PASSWORD',
    transient: false,
  },

  // tiu build (src/bundle) and the image's tar, TOC and frames
  BUILD_SOURCE_NOT_FOUND: {
    meaning: "`tiu build`'s source does not exist",
    action: 'check the source path',
    transient: false,
  },
  BUILD_SOURCE_UNSUPPORTED: {
    meaning: "`tiu build`'s source is of a kind tiu does not build from, or not an OS tree",
    action: 'give a directory, a tar (.tar, .gz, .xz, .zst, .bz2) or an image with /usr and os-release',
    transient: false,
  },
  BUILD_SOURCE_CHANGED: {
    meaning: 'a source file changed while `tiu build` read it',
    action: 'build from a tree nothing writes to (a snapshot, a finished export)',
    transient: false,
  },
  BUILD_SOURCE_UNREADABLE: {
    meaning: 'a source file or directory cannot be read',
    action: 'check the permissions of the named path; build as root for a full OS tree',
    transient: false,
  },
  BUILD_OPTION_INVALID: {
    meaning: 'an option of `tiu build` (layers, rules, dates, …) has a value tiu does not accept',
    action: 'correct the option the message names',
    transient: false,
  },
  TAR_INVALID: {
    meaning: 'a tar stream is not a valid tar archive',
    action: 'check the source tar; an image layer that is not one is LAYER_CORRUPT',
    transient: false,
  },
  TAR_ENTRY_UNSUPPORTED: {
    meaning: 'a tar entry of a type tiu does not write into an image (devices in /dev, sockets, …)',
    action: 'remove the entry from the source',
    transient: false,
  },
  TOC_INVALID: {
    meaning: "a layer's table of contents (zstd:chunked) is malformed",
    action: 'rebuild the image with `tiu build`',
    transient: false,
  },
  TOC_CHECKSUM_MISMATCH: {
    meaning: "a layer's table of contents does not match the digest the signed manifest pins",
    action: 'retry from another source; the registry holds damaged or tampered content',
    transient: false,
  },
  TOC_TOO_LARGE: {
    meaning: "a layer's table of contents is larger than tiu reads",
    action: 'check the image: a table of contents that large is damaged or hostile',
    transient: false,
  },
  ZSTD_OUTPUT_TOO_LARGE: {
    meaning: 'a zstd frame expands past the size declared for it (a decompression bomb)',
    action: 'check the image source; the image is damaged or hostile',
    transient: false,
  },

  // delta artifacts (src/patch, src/bundle/delta.ts)
  PATCH_INVALID: {
    meaning:
      "a delta artifact's patch does not decode, or decodes to other content than the signed TOC or manifest declares",
    action: 'nothing: tiu fetches that file or TOC the normal way; if it persists, make the delta again (`tiu delta`)',
    transient: false,
  },
  DELTA_INDEX_INVALID: {
    meaning: "a delta artifact's index is malformed (a field, an order, a bound)",
    action: 'nothing: tiu updates without the delta; make it again with `tiu delta` to get the saving back',
    transient: false,
  },
  DELTA_INDEX_TOO_LARGE: {
    meaning: "a delta artifact's index (or its header) is larger than tiu reads",
    action: 'check the artifact: an index that large is damaged or hostile; tiu updates without it',
    transient: false,
  },

  DELTA_IMAGE_UNSUPPORTED: {
    meaning:
      '`tiu delta` was given images it cannot make a delta between: a layer without a zstd:chunked table of contents, no platform in common, or the same image twice',
    action: 'build both images with `tiu build` (zstd layers) for the same platform',
    transient: false,
  },

  // tiu update: the image and its layers (src/deploy)
  IMAGE_PLATFORM_MISSING: {
    meaning: "an image index has no image for this machine's OS and architecture",
    action: 'build and push the image for this architecture',
    transient: false,
  },
  IMAGE_NOT_OS: {
    meaning: 'the image has no /usr directory: it is not an OS image',
    action: 'deploy an image built from an OS tree',
    transient: false,
  },
  IMAGE_LAYERS_MISSING: {
    meaning: 'the image manifest has no layers: there is no tree to deploy',
    action: 'deploy an image built from an OS tree',
    transient: false,
  },
  LAYER_UNSUPPORTED: {
    meaning: 'a layer has a media type that is not tar, tar+gzip or tar+zstd',
    action: 'rebuild the image with `tiu build`',
    transient: false,
  },
  LAYER_CORRUPT: {
    meaning: 'a layer does not decode (corrupt or truncated gzip or zstd, a tar that is not one); names the layer',
    action: 'rebuild the image; the layer was damaged when it was made',
    transient: false,
  },
  PATH_UNSAFE: {
    meaning: 'a name or link would leave its root (`..`, absolute, NUL, through a symlink), or a write meets a symlink',
    action: 'remove the named entry from the image; tiu never writes outside the new snapshot',
    transient: false,
  },
  PATH_ENCODING_UNSUPPORTED: {
    meaning:
      'a program (mknod, setfattr) had to be given a relative path of one component that is not UTF-8, which an argument cannot carry (an absolute path is reached through its parent directory and a stand-in name)',
    action: 'report it: tiu passes absolute paths to programs, so this is a bug',
    transient: false,
  },
  HARDLINK_INVALID: {
    meaning: 'a hardlink names an entry that is missing from the tree, outside it, or a directory',
    action: 'fix the named entry in the image',
    transient: false,
  },
  ENTRY_INVALID: {
    meaning:
      'a tree entry is malformed (unknown type, a name that is not UTF-8, a component over 255 bytes, bad numbers)',
    action: 'fix the named entry in the image',
    transient: false,
  },
  XATTR_INVALID: {
    meaning:
      'an extended attribute tiu does not set: a name with a newline or `=`, another namespace, a value over 64 KiB',
    action: 'remove the attribute from the image',
    transient: false,
  },
  CONTENT_UNAVAILABLE: {
    meaning: "the apply could not get an entry's content from the download",
    action: 'run the update again; report it if it persists',
    transient: false,
  },
  APPLY_ROOT_INVALID: {
    meaning: 'the directory the image is written into is missing, not a directory, or a symlink',
    action: 'check the sysroot and its snapshots',
    transient: false,
  },
  DISK_FULL: {
    meaning: 'no room on the filesystem the message names (the cache or the root), or the reserve would be used',
    action: 'free space (old snapshots: `snapper delete`, the cache in /var/cache/tiu), then run again',
    transient: true,
  },
  CACHE_BLOB_MISSING: {
    meaning: 'a blob of the image is missing from the cache (`--offline`, or a cache changed underneath)',
    action: 'run `tiu update --download-only` with the network, then the offline update',
    transient: false,
  },
  SPILL_LOST: {
    meaning:
      "rows of the image's file list that tiu set aside in a temporary file of the cache could not be read back (an I/O error of the cache's disk)",
    action:
      'check the disk holding /var/cache/tiu (dmesg), then run again; nothing of the system was changed before the snapshot, and an unfinished snapshot is removed',
    transient: false,
  },
  CACHE_DAMAGED: {
    meaning: 'the cached copy of the image does not verify; it is dropped from the cache',
    action: 'run again: the next update downloads it again',
    transient: false,
  },
  DELTA_NOT_POSSIBLE: {
    meaning: 'the file-level delta cannot be used for this image (with `--transfer delta`)',
    action: 'use `--transfer auto` or `whole-layer`',
    transient: false,
  },
  DELTA_FILE_MISMATCH: {
    meaning: "a downloaded file does not match its table of contents' digest or size",
    action: 'retry from another source; the registry holds damaged or tampered content',
    transient: false,
  },
  DELTA_RANGE_SHORT: {
    meaning: 'a byte range of a layer came back shorter than requested',
    action: 'run again; the next update resumes the delta',
    transient: true,
  },
  DELTA_CONTENT_MISSING: {
    meaning: 'the delta plan names content that the manifest does not have',
    action: 'run again; report it if it persists',
    transient: false,
  },
  DELTA_STORE_WRITE_FAILED: {
    meaning: 'a downloaded file cannot be written into the content store in the cache',
    action: 'check the cache filesystem (/var/cache/tiu) named in the message',
    transient: false,
  },

  // tiu update: the system (src/deploy, src/host)
  SYSROOT_NOT_SNAPSHOT: {
    meaning: 'the system does not run from a snapper snapshot (@/.snapshots/N/snapshot), or has no snapper root config',
    action: 'run tiu on a snapper-managed btrfs root (openSUSE MicroOS), or give --sysroot',
    transient: false,
  },
  UPDATE_IN_PROGRESS: {
    meaning: 'another tiu update holds the update lock on this system',
    action: 'wait for it to finish',
    transient: true,
  },
  SNAPSHOT_NOT_FOUND: {
    meaning: 'a snapshot the command names, or the booted one, does not exist',
    action: 'pick a number from `tiu status`',
    transient: false,
  },
  SNAPSHOT_UNFINISHED: {
    meaning: 'the snapshot is an unfinished update and cannot be booted',
    action: 'roll back to a finished snapshot; the next update deletes it',
    transient: false,
  },
  SNAPSHOT_IN_USE: {
    meaning: 'the snapshot is the default or the booted one and is not deleted',
    action: 'none; tiu keeps them',
    transient: false,
  },
  SNAPSHOT_BUSY: {
    meaning: 'something stays mounted below a snapshot that is to be deleted',
    action: 'unmount what the message names; the next run deletes the snapshot',
    transient: true,
  },
  SNAPSHOT_DEFAULT_FAILED: {
    meaning: 'btrfs did not take the new snapshot as its default subvolume',
    action: 'check `btrfs subvolume get-default /`; the previous default still boots',
    transient: false,
  },
  ROLLBACK_TARGET_MISSING: {
    meaning: 'there is no earlier snapshot to roll back to',
    action: 'none; name a snapshot with `tiu rollback N` when there is one',
    transient: false,
  },
  ETC_MERGE_FAILED: {
    meaning: 'the three-way merge of /etc could not write a file into the new snapshot',
    action: 'check the named path in the image and in /etc',
    transient: false,
  },
  USER_DB_INVALID: {
    meaning: 'a line of passwd, group or shadow (image or host) is malformed',
    action: 'correct the named file and line',
    transient: false,
  },
  HOOK_FAILED: {
    meaning: 'a hook in the new snapshot (initrd, SELinux, a configured hook) failed; the snapshot was deleted',
    action: "fix the hook or the image; the hook's output is in the message",
    transient: false,
  },
  PODMAN_MISSING: {
    meaning: 'a containers-storage: reference needs podman, and podman is not installed',
    action: 'install podman, or give the image as oci:, oci-archive: or docker:// instead',
    transient: false,
  },
  CONTAINERS_STORAGE_FAILED: {
    meaning: "podman could not save the containers-storage: image (unknown name or ID, a storage it can't open)",
    action: "check the name with `podman images` and the storage specifier; podman's error is the cause",
    transient: false,
  },
  CONTAINERS_STORAGE_UNSUPPORTED: {
    meaning: 'containers-storage: was given as a destination; tiu reads it, it does not write it',
    action: 'copy to oci-archive: and load it with `podman load`, or push to a registry and pull it',
    transient: false,
  },
  COMMAND_FAILED: {
    meaning: 'a program tiu runs failed; the message has its argv and the end of its stderr',
    action: "read the program's error in the message",
    transient: false,
  },
  BTRFS_FAILED: {
    meaning: 'btrfs printed something tiu cannot read',
    action: "check btrfs-progs' version and the filesystem",
    transient: false,
  },
  SNAPPER_FAILED: {
    meaning: 'snapper printed something tiu cannot read, or a userdata value it cannot store',
    action: "check snapper's version and configuration",
    transient: false,
  },
  CHROOT_FAILED: {
    meaning: 'the chroot for hooks could not be set up or taken down',
    action: 'check the mounts the message names',
    transient: false,
  },

  // systemd-boot (src/deploy/boot, src/host/esp.ts)
  CMDLINE_INVALID: {
    meaning:
      'a kernel command line (/etc/kernel/cmdline, kernel-cmdline) is too long, not UTF-8 or has control characters',
    action: 'correct the command line in the image or tiu.conf',
    transient: false,
  },
  BOOT_TRIES_INVALID: {
    meaning: "the image's /etc/kernel/tries is not a number from 1 to 100",
    action: 'correct /etc/kernel/tries in the image, or set boot-tries in tiu.conf',
    transient: false,
  },
  KERNEL_MISSING: {
    meaning: 'a snapshot has no kernel (or initrd) to boot it with systemd-boot',
    action: 'put a kernel and initrd into the image (/usr/lib/modules/VERSION/vmlinuz)',
    transient: false,
  },
  KERNEL_VERSION_INVALID: {
    meaning: "a kernel version can't be used as a file name on the ESP",
    action: 'check the kernel directory names in /usr/lib/modules of the image',
    transient: false,
  },
  ESP_FULL: {
    meaning: 'the ESP has no room for the new kernel and initrd even after unused ones were removed',
    action: "free space on the ESP (other boot loaders' files) or make it larger",
    transient: true,
  },
  ESP_SOURCE_CHANGED: {
    meaning: 'a kernel or initrd changed while it was copied to the ESP',
    action: 'run again',
    transient: true,
  },
  EFI_VARIABLE_IMMUTABLE: {
    meaning: 'an EFI variable could not be made writable or removed',
    action: 'check efivarfs and the firmware; the message names the variable',
    transient: false,
  },
} as const satisfies Record<string, ErrorCodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

export function errorInfo(code: ErrorCode): ErrorCodeInfo {
  return ERROR_CODES[code];
}

/** The CLI's exit status for an error with `code`. */
export function exitStatusOf(code: ErrorCode): number {
  return errorInfo(code).exit ?? EXIT_FAILURE;
}
