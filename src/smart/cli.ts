/**
 * Operator commands of the authorization server, registered on the `glucoguard` program by
 * src/cli.ts: `users add`, `clients add|list|disable|enable|set-jwks`, `launch create`,
 * `signing-keys rotate`. The plain functions below do the work and are what tests call.
 */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { JSONWebKeySet } from 'jose';
import { UsageError } from '../cli-app.js';
import type { Config } from '../config.js';
import { isGlucoGuardError } from '../errors.js';
import { loadServerKeys } from '../keys.js';
import type { KeyValueStore } from '../kv/port.js';
import { SigningKeys } from './keys.js';
import { createLaunch as storeLaunch, servedFhirBase, type CreatedLaunch, type LaunchInput } from './launch.js';
import { splitScopes } from './scopes.js';
import { checkNewClient, SmartStore, type Client, type NewClient, type User } from './store.js';

/** Registers a user (password hashed with scrypt) in `<dataDir>/smart/smart.sqlite`. */
export async function addUser(config: Config, input: { username: string; password: string; fhirUser: string }): Promise<User> {
  const store = new SmartStore(config.dataDir);
  try {
    return await store.addUser(input);
  } finally {
    store.close();
  }
}

/** Registers a client; `secret` is returned once for a confidential-symmetric client. */
export function addClient(config: Config, input: NewClient): { client: Client; secret?: string } {
  const store = new SmartStore(config.dataDir);
  try {
    return store.addClient(input);
  } finally {
    store.close();
  }
}

/** Every registered client, disabled ones too. */
export function listClients(config: Config): Client[] {
  return withStore(config, (store) => store.listClients());
}

/**
 * Disables a client (or enables it again): its token and authorization requests are refused with
 * invalid_client, and its access and refresh tokens stop working at once — in a running server
 * too, which reads the same client store on every token check.
 */
export function setClientDisabled(config: Config, clientId: string, disabled: boolean): Client {
  return withStore(config, (store) => store.setDisabled(clientId, disabled));
}

/** Replaces a Backend Services client's public keys (key rotation). */
export function setClientJwks(config: Config, clientId: string, jwks: JSONWebKeySet): Client {
  return withStore(config, (store) => store.setJwks(clientId, jwks));
}

function withStore<T>(config: Config, work: (store: SmartStore) => T): T {
  const store = new SmartStore(config.dataDir);
  try {
    return work(store);
  } finally {
    store.close();
  }
}

/** One line about a client for `clients list` (never its secret or its keys, only their kids). */
function describeClient(client: Client): string {
  const keys = client.jwks ? `keys ${client.jwks.keys.map((k) => k.kid ?? '(no kid)').join(',')}` : client.jwksUrl ? `jwks-url ${client.jwksUrl}` : '';
  return [client.clientId, client.disabledAt ? `disabled ${client.disabledAt}` : 'active', client.type, JSON.stringify(client.name),
    `scopes ${client.scopes.join(' ')}`, keys].filter(Boolean).join('  ');
}

/** Creates an EHR launch context in the shared KV store, for a registered app and a patient and practitioner the server holds. */
export async function createLaunch(config: Config, kv: KeyValueStore, fhirBase: string,
  input: LaunchInput, resourceExists: (type: string, id: string) => Promise<boolean>): Promise<CreatedLaunch> {
  const store = new SmartStore(config.dataDir);
  try {
    return await storeLaunch({ kv, store, fhirBase, resourceExists }, input);
  } finally {
    store.close();
  }
}

/** New current signing keys; the previous public keys stay in the JWKS. Returns the JWKS key ids. */
export function rotateSigningKeys(config: Config): string[] {
  const keys = SigningKeys.open(config.dataDir, loadServerKeys(config).root);
  keys.rotate();
  return keys.jwks().keys.map((k) => `${k.kid} (${k.alg})`);
}

export interface OpenedForCli {
  config: Config;
  /** The KV store the server uses; `launch create` needs a shared one (Redis). */
  kv?: KeyValueStore;
  /** Whether `type/id` is a stored resource (`users add` binds a user only to one that is). */
  resourceExists(type: string, id: string): Promise<boolean>;
  /**
   * Sets an installation up in the data directory, for a command opened with `setUp`: called once
   * its input passed, so a command refused on its input leaves nothing behind.
   */
  setUp?(): void;
  close?(): Promise<void>;
}

/**
 * Adds `users`, `clients` and `launch` commands to the program. `open` is asked with `setUp` by the
 * commands that may set an installation up (users add, clients add); the others need one there.
 */
export function registerSmartCommands(program: Command, open: (options?: { setUp?: boolean }) => Promise<OpenedForCli>): void {
  const setUp = () => open({ setUp: true });
  const users = program.command('users').description('users of the SMART authorization server');
  users.command('add')
    .description('register a user who can sign in to SMART apps')
    .requiredOption('--username <username>', 'login name')
    .requiredOption('--password-file <file>', 'file holding the password (first line)')
    .requiredOption('--fhir-user <reference>', 'Patient/ID, Practitioner/ID or RelatedPerson/ID (a relative) this user is', fhirUserArg)
    .action(async (opts: { username: string; passwordFile: string; fhirUser: string }) => {
      const password = readFileSync(opts.passwordFile, 'utf8').split(/\r?\n/)[0] ?? '';
      await withOpened(setUp, async ({ config, resourceExists, setUp: setUpHere }) => {
        // a user bound to an id no resource holds would be given whatever is later created with that id
        const [type, id] = opts.fhirUser.split('/') as [string, string];
        if (!(await resourceExists(type, id))) throw new UsageError(`${opts.fhirUser} not found`);
        setUpHere?.();
        const user = await addUser(config, { username: opts.username, password, fhirUser: opts.fhirUser });
        console.log(`user ${user.username} added (${user.fhirUser})`);
      });
    });

  users.command('list')
    .description('list users: login name, the Patient, Practitioner or RelatedPerson they are, when added, when disabled (never a password)')
    .action(async () => {
      await withOpened(open, async ({ config }) => {
        const all = withStore(config, (store) => store.listUsers());
        if (all.length === 0) console.log('no users registered');
        for (const u of all) console.log(`${u.username}  ${u.fhirUser}  added ${u.createdAt}${u.disabledAt ? `  disabled ${u.disabledAt}` : ''}`);
      });
    });

  users.command('disable')
    .description('disable a user (someone who left): sign-in refused, and every access and refresh token of theirs stops working at once')
    .requiredOption('--username <username>', 'the user to disable')
    .action(async (opts: { username: string }) => {
      await withOpened(open, async ({ config }) => {
        const user = withStore(config, (store) => store.setUserDisabled(opts.username, true));
        console.log(`user ${user.username} (${user.fhirUser}) disabled (${user.disabledAt}); their tokens no longer work`);
      });
    });

  users.command('enable')
    .description('let a disabled user sign in again (the tokens issued before the disabling stay dead)')
    .requiredOption('--username <username>', 'the user to enable')
    .action(async (opts: { username: string }) => {
      await withOpened(open, async ({ config }) => {
        const user = withStore(config, (store) => store.setUserDisabled(opts.username, false));
        console.log(`user ${user.username} (${user.fhirUser}) enabled: they may sign in again`);
      });
    });

  const clients = program.command('clients').description('applications registered with the SMART authorization server');
  clients.command('add')
    .description('register a SMART app or Backend Services client; prints its client_id (and secret, once)')
    .requiredOption('--name <name>', 'name shown to users on the approval page')
    .option('--redirect-uri <uri...>', 'registered redirect URI (repeatable)')
    .addOption(new Option('--public', 'public client (no secret; PKCE)').conflicts(['secret', 'jwksFile', 'jwksUrl']))
    .addOption(new Option('--secret', 'confidential client with a generated secret').conflicts(['jwksFile', 'jwksUrl']))
    .addOption(new Option('--jwks-file <file>', 'confidential client authenticating with private_key_jwt; its public JWKS').conflicts('jwksUrl'))
    .option('--jwks-url <url>', 'confidential client authenticating with private_key_jwt; URL of its JWKS')
    .option('--scopes <scopes>', 'space-separated scopes the client may be granted')
    .option('--launch-uri <uri>', 'the app URL an EHR launch opens')
    .action(async (opts: { name: string; redirectUri?: string[]; public?: boolean; secret?: boolean; jwksFile?: string; jwksUrl?: string;
      scopes?: string; launchUri?: string }) => {
      const type = opts.jwksFile || opts.jwksUrl ? 'confidential-asymmetric' : opts.secret ? 'confidential-symmetric' : 'public';
      const jwks = opts.jwksFile ? readJwksFile(opts.jwksFile) : undefined;
      const input: NewClient = {
        name: opts.name, type, redirectUris: opts.redirectUri, jwks, jwksUrl: opts.jwksUrl,
        scopes: opts.scopes ? splitScopes(opts.scopes) : undefined, launchUri: opts.launchUri,
      };
      // refused before an installation is set up for it
      await withOpened(setUp, async ({ config, setUp: setUpHere }) => {
        setUpHere?.();
        const { client, secret } = addClient(config, input);
        console.log(`client_id: ${client.clientId}`);
        if (secret) console.log(`client_secret: ${secret}\n(shown once; store it now)`);
        console.log(`type: ${client.type}\nscopes: ${client.scopes.join(' ')}`);
      }, () => checkNewClient(input));
    });

  clients.command('list')
    .description('list registered clients: client_id, active or disabled, type, name, scopes, key ids')
    .action(async () => {
      await withOpened(open, async ({ config }) => {
        const all = listClients(config);
        if (all.length === 0) console.log('no clients registered');
        for (const client of all) console.log(describeClient(client));
      });
    });

  clients.command('disable')
    .description('disable a client: its token requests are refused (invalid_client) and its access and refresh tokens stop working at once')
    .requiredOption('--client-id <id>', 'the client to disable')
    .action(async (opts: { clientId: string }) => {
      await withOpened(open, async ({ config }) => {
        const client = setClientDisabled(config, opts.clientId, true);
        console.log(`client ${client.clientId} disabled (${client.disabledAt}); its tokens no longer work`);
      });
    });

  clients.command('enable')
    .description('enable a disabled client again (its tokens that have not expired work again)')
    .requiredOption('--client-id <id>', 'the client to enable')
    .action(async (opts: { clientId: string }) => {
      await withOpened(open, async ({ config }) => {
        const client = setClientDisabled(config, opts.clientId, false);
        console.log(`client ${client.clientId} enabled`);
      });
    });

  clients.command('set-jwks')
    .description('replace the public keys of a Backend Services client (key rotation); assertions signed with a key left out are refused from now on')
    .requiredOption('--client-id <id>', 'the client whose keys to replace')
    .requiredOption('--jwks-file <file>', 'its new public JWKS')
    .action(async (opts: { clientId: string; jwksFile: string }) => {
      await withOpened(open, async ({ config }) => {
        const jwks = readJwksFile(opts.jwksFile);
        const client = setClientJwks(config, opts.clientId, jwks);
        console.log(`client ${client.clientId} keys replaced: ${client.jwks!.keys.map((k) => k.kid ?? '(no kid)').join(', ')}`);
      });
    });

  const signingKeys = program.command('signing-keys').description('keys that sign access tokens (ES256) and id_tokens (RS256)');
  signingKeys.command('rotate')
    .description('make new signing keys; the previous public keys stay published so issued tokens keep verifying (running servers on the data directory take them up within a second)')
    .action(async () => {
      await withOpened(open, async ({ config }) => {
        const kids = rotateSigningKeys(config);
        console.log(`signing keys rotated; JWKS now holds:\n  ${kids.join('\n  ')}\nrunning servers on this data directory sign with the new keys within a second (restart every replica still on an earlier release)`);
      });
    });

  const launch = program.command('launch').description('EHR launch contexts');
  launch.command('create')
    .description('create a single-use EHR launch context; prints the launch value (and app URL)')
    .requiredOption('--patient <id>', 'patient in context')
    .option('--encounter <id>', 'encounter in context')
    .requiredOption('--practitioner <id>', 'the clinician the EHR vouches for')
    .requiredOption('--client-id <id>', 'the app the launch is for (only it may use the launch); prints its launch URL')
    .option('--need-patient-banner', 'the app shows its own patient banner (an EHR usually shows one itself)')
    .option('--intent <text>', 'what the app is launched for (token response intent, e.g. reconcile-medications)')
    .action(async (opts: { patient: string; encounter?: string; practitioner: string; clientId: string; needPatientBanner?: boolean; intent?: string }) => {
      await withOpened(open, async ({ config, kv, resourceExists }) => {
        // the embedded KV file is shared with a server on the same data directory, Redis with any
        if (!kv || kv.description.adapter === 'memory') {
          throw new Error('launch contexts made by the CLI reach the server only through a KV store it shares: the embedded one '
            + '(the default, on the server\'s data directory) or Redis (REDIS_URL), not GLUCOGUARD_KV=memory; '
            + 'otherwise an EHR client with system/launch uses POST /smart/launch');
        }
        // the launch is redeemed by the server sharing the store: its iss is that server's FHIR base
        const own = `${config.baseUrl}/fhir`;
        const served = await servedFhirBase(kv);
        if (served !== undefined && served !== own) {
          console.error(`note: the launch is for the server that shares this store, whose FHIR base is ${served} (this command's settings give ${own})`);
        }
        const created = await createLaunch(config, kv, served ?? own, opts, resourceExists);
        console.log(`launch: ${created.launch}\nexpires_in: ${created.expiresIn}`);
        if (created.launchUrl) console.log(`launch_url: ${created.launchUrl}`);
      });
    });
}

/**
 * Runs a command on what `open` gives, saying why it failed: exit 2 for input it was given wrongly
 * (a value the store or the launch refuses as a bad request: a password too short, an unknown user
 * or client, a resource that is not there), 1 for anything else, as docs/operations.md states.
 */
async function withOpened(open: () => Promise<OpenedForCli>, work: (opened: OpenedForCli) => Promise<void>, check?: () => void): Promise<void> {
  try {
    check?.(); // input refused before anything is opened (or set up)
  } catch (err) {
    return refused(err);
  }
  const opened = await open();
  try {
    await work(opened);
  } catch (err) {
    refused(err);
  } finally {
    await opened.close?.();
  }
}

/** Says why a command failed; bad input exits 2, anything else 1. */
function refused(err: unknown): void {
  console.error(`glucoguard: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = err instanceof UsageError || err instanceof InvalidArgumentError || isGlucoGuardError(err, 'ERR_INVALID') ? 2 : 1;
}

/** A JWKS from a file, or an error naming the file: never the parser's message, which quotes the file (it may be a password or private key given by mistake). */
function readJwksFile(file: string): JSONWebKeySet {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as JSONWebKeySet;
  } catch {
    throw new UsageError(`${file} could not be read as a JSON JWKS`);
  }
}

/** A relative (RelatedPerson) signs in as a grantee: they see only what the patient granted them. */
function fhirUserArg(value: string): string {
  if (!/^(Patient|Practitioner|RelatedPerson)\/[A-Za-z0-9\-.]{1,64}$/.test(value)) throw new InvalidArgumentError('must be Patient/ID, Practitioner/ID or RelatedPerson/ID');
  return value;
}
