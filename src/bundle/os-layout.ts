/**
 * Facts of the MicroOS tree that `tiu build` and `tiu update` both rely on, kept in one list so
 * that what a bundle leaves out and what an update leaves alone cannot drift apart.
 */

/** The device's own data (subvolumes on MicroOS): never image content, left out of bundles, never written by an update. */
export const DEVICE_DATA = ['.snapshots', 'home', 'root', 'opt', 'srv', 'usr/local', 'boot/writable'] as const;
