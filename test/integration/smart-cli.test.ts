/** `glucoguard users add`, `clients add|list|disable|enable|set-jwks`, `launch create` as an operator runs them. */
import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { loadServerKeys } from '../../src/keys.js';
import { loadConfig, type Config } from '../../src/config.js';
import { MemoryKeyValueStore } from '../../src/kv/memory.js';
import { EmbeddedKeyValueStore } from '../../src/kv/embedded.js';
import type { KeyValueStore } from '../../src/kv/port.js';
import { registerSmartCommands } from '../../src/smart/cli.js';
import { SmartStore } from '../../src/smart/store.js';
import { verifyPassword } from '../../src/smart/passwords.js';
import { takeLaunch } from '../../src/smart/launch.js';

let dir: string;
let config: Config;
let out: string[];
let err: string[];

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'gg-cli-'));
  config = loadConfig({}, { dataDir: dir, baseUrl: 'https://gg.example' });
  out = [];
  err = [];
  jest.spyOn(console, 'log').mockImplementation((...a: unknown[]) => { out.push(a.join(' ')); });
  jest.spyOn(console, 'error').mockImplementation((...a: unknown[]) => { err.push(a.join(' ')); });
  process.exitCode = undefined;
});
afterEach(() => {
  jest.restoreAllMocks();
  process.exitCode = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** The resources the repository holds, for `users add`. */
const stored = new Set(['Patient/p1', 'Practitioner/d1']);

async function run(args: string[], kv?: KeyValueStore): Promise<void> {
  const program = new Command().exitOverride();
  registerSmartCommands(program, async () => ({ config, kv, resourceExists: async (type, id) => stored.has(`${type}/${id}`) }));
  await program.parseAsync(['node', 'glucoguard', ...args]);
}

describe('glucoguard users add', () => {
  test('stores the user with a scrypt hash of the password file, never the password', async () => {
    const file = path.join(dir, 'pw');
    writeFileSync(file, 'a long passphrase\n');
    await run(['users', 'add', '--username', 'ana', '--password-file', file, '--fhir-user', 'Patient/p1']);
    expect(out.join('\n')).toContain('user ana added (Patient/p1)');
    const store = new SmartStore(dir);
    const user = store.getUser('ana')!;
    store.close();
    expect(user.passwordHash).not.toContain('a long passphrase');
    expect(await verifyPassword('a long passphrase', user.passwordHash)).toBe(true);
  });

  test('refuses a fhir-user no stored resource is, storing no user', async () => {
    const file = path.join(dir, 'pw');
    writeFileSync(file, 'a long passphrase\n');
    await run(['users', 'add', '--username', 'ghost', '--password-file', file, '--fhir-user', 'Patient/nonexistent']);
    expect(process.exitCode).toBe(2);
    expect(err.join('\n')).toContain('Patient/nonexistent not found');
    const store = new SmartStore(dir);
    expect(store.getUser('ghost')).toBeUndefined();
    store.close();
  });

  test('users list names each user and who they are, never a password or its hash', async () => {
    await run(['users', 'list']);
    expect(out).toEqual(['no users registered']);
    const file = path.join(dir, 'pw');
    writeFileSync(file, 'a long passphrase\n');
    await run(['users', 'add', '--username', 'ana', '--password-file', file, '--fhir-user', 'Patient/p1']);
    await run(['users', 'add', '--username', 'kofi', '--password-file', file, '--fhir-user', 'Practitioner/d1']);
    out = [];
    await run(['users', 'list']);
    expect(out).toEqual([expect.stringMatching(/^ana {2}Patient\/p1 {2}added \d{4}-/), expect.stringMatching(/^kofi {2}Practitioner\/d1 {2}added \d{4}-/)]);
    expect(out.join('\n')).not.toMatch(/passphrase|scrypt/);
  });

  test('refuses a fhir-user that is not Patient/ID or Practitioner/ID', async () => {
    await expect(run(['users', 'add', '--username', 'x', '--password-file', '/dev/null', '--fhir-user', 'Device/1'])).rejects.toThrow();
  });
});

describe('glucoguard clients add', () => {
  test('--secret prints the client_id and the secret once; only its hash is stored', async () => {
    await run(['clients', 'add', '--name', 'Viewer', '--redirect-uri', 'https://app.example/cb', '--secret', '--launch-uri', 'https://app.example/launch']);
    const text = out.join('\n');
    const clientId = /client_id: (\S+)/.exec(text)![1]!;
    const secret = /client_secret: (\S+)/.exec(text)![1]!;
    const store = new SmartStore(dir);
    const client = store.getClient(clientId)!;
    store.close();
    expect(client).toMatchObject({ name: 'Viewer', type: 'confidential-symmetric', redirectUris: ['https://app.example/cb'] });
    expect(client.secretHash).not.toContain(secret);
  });

  test('--jwks-file registers a Backend Services client with the requested scopes', async () => {
    const file = path.join(dir, 'jwks.json');
    writeFileSync(file, JSON.stringify({ keys: [{ kty: 'EC', crv: 'P-384', x: 'x', y: 'y', kid: 'k1' }] }));
    await run(['clients', 'add', '--name', 'Engine', '--jwks-file', file, '--scopes', 'system/Observation.rs system/launch']);
    expect(out.join('\n')).toMatch(/type: confidential-asymmetric\nscopes: system\/Observation.rs system\/launch/);
    expect(out.join('\n')).not.toMatch(/client_secret/);
  });

  test('a --jwks-file that is not JSON is refused without quoting it (it may be a password)', async () => {
    const file = path.join(dir, 'pw.txt');
    writeFileSync(file, 'correct horse battery staple\n');
    const refused = await run(['clients', 'add', '--name', 'Engine', '--jwks-file', file]).then(() => undefined, (e: unknown) => e as Error);
    expect(refused?.message).toBe(`${file} could not be read as a JSON JWKS`);
    expect(err.join('\n')).not.toContain('correct');
  });

  test('a public client without a redirect URI is refused with a clear message', async () => {
    await run(['clients', 'add', '--name', 'Bad', '--public']);
    expect(process.exitCode).toBe(2);
    expect(err.join('\n')).toContain('redirect URI is required');
  });
});

describe('glucoguard users list / disable / enable', () => {
  test('disable marks the user (their tokens die: test/integration/smart-user-disable.test.ts), list says so; enable undoes it', async () => {
    const file = path.join(dir, 'pw');
    writeFileSync(file, 'a long passphrase\n');
    await run(['users', 'add', '--username', 'dr.lee', '--password-file', file, '--fhir-user', 'Practitioner/d1']);
    out.length = 0;
    await run(['users', 'disable', '--username', 'dr.lee']);
    expect(process.exitCode).toBeUndefined();
    expect(out.join('\n')).toMatch(/^user dr\.lee \(Practitioner\/d1\) disabled \(\d{4}-.*\); their tokens no longer work$/);
    const store = new SmartStore(dir);
    expect(store.getUser('dr.lee')?.disabledAt).toMatch(/^\d{4}-/);
    expect(store.userTokensBefore('dr.lee')).toBe(Infinity);
    store.close();
    out.length = 0;
    await run(['users', 'list']);
    expect(out).toEqual([expect.stringMatching(/^dr\.lee {2}Practitioner\/d1 {2}added \d{4}-\S+ {2}disabled \d{4}-\S+$/)]);
    out.length = 0;
    await run(['users', 'enable', '--username', 'dr.lee']);
    expect(out).toEqual(['user dr.lee (Practitioner/d1) enabled: they may sign in again']);
    const again = new SmartStore(dir);
    expect(again.getUser('dr.lee')?.disabledAt).toBeUndefined();
    expect(again.userTokensBefore('dr.lee')).toBeGreaterThan(0);
    again.close();
  });

  test('disable of an unknown user fails with a clear message', async () => {
    await run(['users', 'disable', '--username', 'nobody']);
    expect(process.exitCode).toBe(2);
    expect(err.join('\n')).toContain('no user "nobody"');
  });
});

describe('glucoguard clients list / disable / enable / set-jwks', () => {
  const jwksFile = (name: string, keys: object[]): string => {
    const file = path.join(dir, name);
    writeFileSync(file, JSON.stringify({ keys }));
    return file;
  };
  const ecKey = (kid: string) => ({ kty: 'EC', crv: 'P-384', x: 'x', y: 'y', kid });
  async function addEngine(): Promise<string> {
    await run(['clients', 'add', '--name', 'Engine', '--jwks-file', jwksFile('jwks.json', [ecKey('k1')]), '--scopes', 'system/Observation.rs']);
    const clientId = /client_id: (\S+)/.exec(out.join('\n'))![1]!;
    out.length = 0;
    return clientId;
  }

  test('list shows every client with its state, type, name, scopes and key ids, never a secret', async () => {
    await run(['clients', 'list']);
    expect(out).toEqual(['no clients registered']);
    out.length = 0;
    await run(['clients', 'add', '--name', 'Viewer', '--redirect-uri', 'https://app.example/cb', '--secret']);
    const secret = /client_secret: (\S+)/.exec(out.join('\n'))![1]!;
    out.length = 0;
    const engine = await addEngine();
    await run(['clients', 'list']);
    expect(out).toHaveLength(2);
    expect(out[1]).toBe(`${engine}  active  confidential-asymmetric  "Engine"  scopes system/Observation.rs  keys k1`);
    expect(out[0]).toMatch(/ active {2}confidential-symmetric {2}"Viewer" {2}scopes /);
    expect(out.join('\n')).not.toContain(secret);
  });

  test('disable marks the client disabled: the store no longer hands it out, list says so; enable undoes it', async () => {
    const engine = await addEngine();
    await run(['clients', 'disable', '--client-id', engine]);
    expect(process.exitCode).toBeUndefined();
    expect(out.join('\n')).toMatch(new RegExp(`client ${engine} disabled \\(\\d{4}-`));
    const store = new SmartStore(dir);
    expect(store.getClient(engine)).toBeUndefined();
    expect(store.isDisabled(engine)).toBe(true);
    store.close();
    out.length = 0;
    await run(['clients', 'list']);
    expect(out[0]).toMatch(new RegExp(`^${engine} {2}disabled \\d{4}-`));
    await run(['clients', 'enable', '--client-id', engine]);
    const again = new SmartStore(dir);
    expect(again.getClient(engine)).toMatchObject({ clientId: engine, name: 'Engine' });
    again.close();
  });

  test('disable of an unknown client fails with a clear message', async () => {
    await run(['clients', 'disable', '--client-id', 'nope']);
    expect(process.exitCode).toBe(2);
    expect(err.join('\n')).toContain('no client "nope"');
  });

  test('set-jwks replaces the keys; private keys, empty sets, unreadable files and clients without keys are refused', async () => {
    const engine = await addEngine();
    await run(['clients', 'set-jwks', '--client-id', engine, '--jwks-file', jwksFile('new.json', [ecKey('k2'), ecKey('k3')])]);
    expect(out.join('\n')).toContain(`client ${engine} keys replaced: k2, k3`);
    const store = new SmartStore(dir);
    expect(store.getClient(engine)!.jwks!.keys.map((k) => k.kid)).toEqual(['k2', 'k3']);
    store.close();

    await run(['clients', 'set-jwks', '--client-id', engine, '--jwks-file', jwksFile('private.json', [{ ...ecKey('k4'), d: 'secret-part' }])]);
    expect(process.exitCode).toBe(2);
    expect(err.join('\n')).toContain('public keys only');
    expect(err.join('\n')).not.toContain('secret-part');
    err.length = 0;
    await run(['clients', 'set-jwks', '--client-id', engine, '--jwks-file', jwksFile('empty.json', [])]);
    expect(err.join('\n')).toContain('the JWKS has no keys');
    const notJson = path.join(dir, 'key.pem');
    writeFileSync(notJson, '-----BEGIN PRIVATE KEY-----\nMIIsecretmaterial\n');
    await run(['clients', 'set-jwks', '--client-id', engine, '--jwks-file', notJson]);
    expect(err.join('\n')).toContain('could not be read as a JSON JWKS');
    expect(err.join('\n')).not.toContain('MIIsecret');
    await run(['clients', 'add', '--name', 'Viewer', '--redirect-uri', 'https://app.example/cb', '--public']);
    const viewer = /client_id: (\S+)/.exec(out.join('\n'))![1]!;
    await run(['clients', 'set-jwks', '--client-id', viewer, '--jwks-file', jwksFile('v.json', [ecKey('k5')])]);
    expect(err.join('\n')).toContain('does not authenticate with keys');
    const after = new SmartStore(dir);
    expect(after.getClient(engine)!.jwks!.keys.map((k) => k.kid)).toEqual(['k2', 'k3']);
    after.close();
  });
});

describe('glucoguard signing-keys rotate', () => {
  test('adds new keys and keeps the previous public keys in the JWKS', async () => {
    const { SigningKeys } = await import('../../src/smart/keys.js');
    const before = SigningKeys.open(dir, loadServerKeys({ dataDir: dir }).root).jwks().keys.map((k) => k.kid);
    await run(['signing-keys', 'rotate']);
    const after = SigningKeys.open(dir, loadServerKeys({ dataDir: dir }).root).jwks().keys.map((k) => k.kid);
    expect(after).toHaveLength(4);
    expect(after).toEqual(expect.arrayContaining(before));
    expect(out.join('\n')).toContain('restart every replica');
  });
});

describe('glucoguard launch create', () => {
  test('needs a KV store the server shares and says so (process memory is not)', async () => {
    await run(['launch', 'create', '--patient', 'p1', '--practitioner', 'd1', '--client-id', 'app'], new MemoryKeyValueStore());
    expect(process.exitCode).toBe(1);
    expect(err.join('\n')).toContain('not GLUCOGUARD_KV=memory');
  });

  // (It asked for Redis until session 23; the embedded KV file, the default since session 22, is
  // shared by every process on the data directory.)
  test('with the embedded KV, the launch made by the CLI is taken by another process on the same data directory', async () => {
    const file = path.join(dir, 'kv.sqlite');
    const rootKey = loadServerKeys(config).root;
    const cli = new EmbeddedKeyValueStore({ file, rootKey });
    const server = new EmbeddedKeyValueStore({ file, rootKey });
    try {
      const store = new SmartStore(dir);
      const clientId = store.addClient({ name: 'viewer', type: 'public', redirectUris: ['https://app.example/cb'], launchUri: 'https://app.example/launch' }).client.clientId;
      store.close();
      await run(['launch', 'create', '--patient', 'p1', '--practitioner', 'd1', '--client-id', clientId], cli);
      expect(err).toEqual([]);
      const launch = /launch: (\S+)/.exec(out.join('\n'))![1]!;
      expect(await takeLaunch(server, launch)).toMatchObject({ patient: 'p1', practitioner: 'd1', clientId });
      expect(await takeLaunch(server, launch)).toBeUndefined();
    } finally {
      await cli.close();
      await server.close();
    }
  });

  // (A launch used to be creatable for no app in particular: any registered app could then redeem it
  // for the practitioner's access without a sign-in. --client-id is now required.)
  test('with a shared store, prints a single-use launch value holding the context, bound to its app', async () => {
    const kv = new MemoryKeyValueStore();
    const shared = Object.assign(Object.create(kv) as KeyValueStore, { description: { adapter: 'redis', location: 'test' } });
    const store = new SmartStore(dir);
    const clientId = store.addClient({ name: 'viewer', type: 'public', redirectUris: ['https://app.example/cb'], launchUri: 'https://app.example/launch' }).client.clientId;
    store.close();
    await run(['launch', 'create', '--patient', 'p1', '--encounter', 'e1', '--practitioner', 'd1', '--client-id', clientId], shared);
    const launch = /launch: (\S+)/.exec(out.join('\n'))![1]!;
    expect(out.join('\n')).toMatch(/launch_url: https:\/\/app\.example\/launch\?iss=/);
    expect(await takeLaunch(kv, launch)).toEqual({ patient: 'p1', encounter: 'e1', practitioner: 'd1', clientId });
    expect(await takeLaunch(kv, launch)).toBeUndefined();
    // the EHR's banner and intent, when the operator gives them
    out.length = 0;
    await run(['launch', 'create', '--patient', 'p1', '--practitioner', 'd1', '--client-id', clientId, '--need-patient-banner', '--intent', 'reconcile-medications'], shared);
    const withIntent = /launch: (\S+)/.exec(out.join('\n'))![1]!;
    expect(await takeLaunch(kv, withIntent)).toEqual({ patient: 'p1', practitioner: 'd1', clientId, needPatientBanner: true, intent: 'reconcile-medications' });
    await kv.close();
  });

  test('refuses a launch for no app, for an unregistered app, or naming a patient or practitioner the server does not hold', async () => {
    const kv = new MemoryKeyValueStore();
    const shared = Object.assign(Object.create(kv) as KeyValueStore, { description: { adapter: 'redis', location: 'test' } });
    const store = new SmartStore(dir);
    const clientId = store.addClient({ name: 'viewer', type: 'public', redirectUris: ['https://app.example/cb'] }).client.clientId;
    store.close();
    await expect(run(['launch', 'create', '--patient', 'p1', '--practitioner', 'd1'], shared)).rejects.toThrow(/--client-id/);
    for (const [args, message] of [
      [['--patient', 'p1', '--practitioner', 'd1', '--client-id', 'no-such-app'], /not a registered application/],
      [['--patient', 'nobody', '--practitioner', 'd1', '--client-id', clientId], /Patient\/nobody does not exist/],
      [['--patient', 'p1', '--practitioner', 'ghost', '--client-id', clientId], /Practitioner\/ghost does not exist/],
    ] as const) {
      err.length = 0;
      process.exitCode = undefined;
      await run(['launch', 'create', ...args], shared);
      expect(process.exitCode).toBe(2);
      expect(err.join('\n')).toMatch(message);
    }
    expect(out.join('\n')).not.toContain('launch:');
    await kv.close();
  });
});
