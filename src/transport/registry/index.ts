/** The registry transport: an OCI distribution client as a Target. */
export { openRegistryTarget, registriesConfOf, RegistryTarget, fallbackTag, type RegistryClientOptions } from './target.ts';
export { RegistrySession, apiHost, type SessionOptions } from './session.ts';
export { RepositoryClient, type ClientTuning } from './client.ts';
export { loadRegistriesConf, parseRegistriesConf, pullEndpoints, pushEndpoint, type RegistriesConf } from './registries-conf.ts';
export { lookupCredentials, authFilePaths, type Credentials, type CredentialOptions } from './credentials.ts';
export * from './errors.ts';
export { setHttpLogger } from './http.ts';
