/**
 * Master-key rotation (src/key-rotation.ts). After it only the new key opens the data directory;
 * stored versions, search, patients' pseudonyms and custodial password wraps are as before. A
 * rotation stopped after any of its steps keeps everything start-ups from using the directory
 * until `--resume` finishes it, and nothing is lost.
 */
import { randomBytes } from 'node:crypto';
import { cpSync, existsSync, readFileSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { parseSearchRequest } from '@medplum/core';
import type { Bundle, Observation, Patient } from '@medplum/fhirtypes';
import type { App } from '../../src/app.js';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import type { HttpMethod } from '../../src/fhir/types.js';
import { rotateMasterKey, type RotationStep } from '../../src/key-rotation.js';
import { describeServerKeys, keyFingerprint, loadServerKeys, masterKeyPath } from '../../src/keys.js';
import { EmbeddedRepository } from '../../src/repository/embedded/index.js';
import { startTestApp, tempDir } from '../support/app.js';
import { startUpstreamFhirServer } from '../support/upstream-server.js';

const STEPS: RotationStep[] = ['journal', 'master-key-next', 'root-next', 'store', 'root-moved', 'master-key-moved'];
const PASSWORD = 'correct horse battery';
const newKey = () => randomBytes(32).toString('base64');

interface Seeded {
  patientId: string;
  observationId: string;
  pseudonym: string;
  address: string;
  root: string;
}

async function handle(app: App, method: HttpMethod, p: string, body?: unknown, query: Record<string, string> = {}) {
  return app.fhir.handle({ method, path: p, query, headers: { 'content-type': 'application/fhir+json' }, body, access: OPEN_ACCESS });
}

/** A patient with a reading and a custodial key under a password, in a closed data directory. */
async function seed(env: Record<string, string>): Promise<{ dir: string; seeded: Seeded }> {
  const t = await startTestApp(env);
  const { app } = t;
  const patient = (await handle(app, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Okafor', given: ['Ada'] }] })).body as Patient;
  const observation = (await handle(app, 'POST', 'Observation', {
    resourceType: 'Observation', status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '2339-0', display: 'Glucose [Mass/volume] in Blood' }] },
    subject: { reference: `Patient/${patient.id}` }, effectiveDateTime: '2026-03-01T08:00:00Z',
    valueQuantity: { value: 104, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  } satisfies Observation)).body as Observation;
  await app.consent.keys.onLogin(patient.id!, PASSWORD, 'grant-1', 60_000);
  const key = await app.consent.keys.ensure(patient.id!, { kind: 'token', grantId: 'grant-1' });
  const seeded = {
    patientId: patient.id!, observationId: observation.id!, pseudonym: app.consent.keys.pseudonym(patient.id!), address: key.address,
    root: loadServerKeys({ dataDir: t.dataDir, masterKey: env.GLUCOGUARD_MASTER_KEY }).root,
  };
  await app.close();
  return { dir: t.dataDir, seeded };
}

/** The whole app on the data directory sees what was seeded: read, search, pseudonym, and the password still opens the custodial key. */
async function expectIntact(dir: string, seeded: Seeded, env: Record<string, string> = {}): Promise<void> {
  const t = await startTestApp(env, dir);
  try {
    const { app } = t;
    expect((await handle(app, 'GET', `Patient/${seeded.patientId}`)).status).toBe(200);
    const found = (await handle(app, 'GET', 'Observation', undefined, { patient: seeded.patientId, code: 'http://loinc.org|2339-0' })).body as Bundle;
    expect(found.entry?.map((e) => e.resource?.id)).toEqual([seeded.observationId]);
    expect(app.consent.keys.pseudonym(seeded.patientId)).toBe(seeded.pseudonym);
    await app.consent.keys.onLogin(seeded.patientId, PASSWORD, 'grant-2', 60_000);
    expect((await app.consent.keys.signer(seeded.patientId, { kind: 'token', grantId: 'grant-2' }))?.address).toBe(seeded.address);
  } finally {
    await t.app.close();
  }
}

/** The store through the repository alone (faster than the whole app): the reading is there under this key. */
async function expectStoreOpens(dir: string, masterKey?: string): Promise<void> {
  const repo = await EmbeddedRepository.open({ dataDir: dir, ...(masterKey ? { masterKey } : {}) });
  try {
    const found = await repo.search(parseSearchRequest('Observation', { code: 'http://loinc.org|2339-0' }));
    expect(found.resources).toHaveLength(1);
  } finally {
    await repo.close();
  }
}

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe('master key held in the data directory', () => {
  let dir = '';
  let seeded: Seeded;
  beforeAll(async () => {
    ({ dir, seeded } = await seed({}));
    dirs.push(dir);
  }, 60_000);

  test('a rotation re-wraps the store under a new key file; the old key opens nothing; data, search, pseudonyms and password wraps are as before', async () => {
    const keyFile = masterKeyPath(dir);
    const oldKey = readFileSync(keyFile, 'utf8').trim();
    const result = rotateMasterKey({ config: { dataDir: dir } });
    expect(result.held).toBe('file');
    expect(result.newKey).toBeUndefined(); // the data directory holds it; nothing to hand the operator
    expect(result.dataKeys).toEqual({ rewrapped: expect.any(Number), already: 0, erased: 0 });
    expect(result.dataKeys!.rewrapped).toBeGreaterThanOrEqual(3); // the patient's, the index and the check key at least
    const keys = loadServerKeys({ dataDir: dir });
    expect(keys.master).not.toBe(oldKey);
    expect(keys.root).toBe(seeded.root);
    const status = describeServerKeys({ dataDir: dir });
    expect(status.problem).toBeUndefined();
    expect(status.lines.join('\n')).toContain(`key root: sealed in ${path.join(dir, 'keys', 'root.sealed')} (fingerprint ${keyFingerprint(seeded.root).slice(0, 16)})`);
    expect(status.lines.join('\n')).toContain(`(fingerprint ${keyFingerprint(keys.master).slice(0, 16)})`);
    expect(existsSync(path.join(dir, 'keys', 'rotation.json'))).toBe(false);
    await expectIntact(dir, seeded);

    // the old key: refused by the sealed root, and without it by the store's own check
    await expect(EmbeddedRepository.open({ dataDir: dir, masterKey: oldKey })).rejects.toThrow(/root\.sealed does not open with this master key/);
    const sealed = path.join(dir, 'keys', 'root.sealed');
    renameSync(sealed, `${sealed}.away`);
    try {
      await expect(EmbeddedRepository.open({ dataDir: dir, masterKey: oldKey })).rejects.toThrow(/the master key does not match this data directory/);
    } finally {
      renameSync(`${sealed}.away`, sealed);
    }

    // a second rotation keeps the same root (now read from root.sealed)
    rotateMasterKey({ config: { dataDir: dir } });
    expect(loadServerKeys({ dataDir: dir }).root).toBe(seeded.root);
    await expectStoreOpens(dir);
  }, 60_000);

  test('a lost key file is not replaced by a new key: start-up asks for the backup', () => {
    const copy = tempDir('gg-rotate-');
    dirs.push(copy);
    cpSync(dir, copy, { recursive: true });
    rmSync(masterKeyPath(copy));
    expect(() => loadServerKeys({ dataDir: copy })).toThrow(/master\.key is missing, but .* already holds data made with a master key: restore the key file/);
    expect(existsSync(masterKeyPath(copy))).toBe(false);
  });

  test('refusals change nothing: a key given for a file-held master, nothing to resume', () => {
    const before = readFileSync(masterKeyPath(dir), 'utf8');
    expect(() => rotateMasterKey({ config: { dataDir: dir }, newKey: newKey() })).toThrow(/makes the new key itself/);
    expect(() => rotateMasterKey({ config: { dataDir: dir }, resume: true })).toThrow(/no master-key rotation .* to resume/);
    expect(readFileSync(masterKeyPath(dir), 'utf8')).toBe(before);
    expect(existsSync(path.join(dir, 'keys', 'rotation.json'))).toBe(false);
  });
});

describe('master key given by configuration', () => {
  const k1 = newKey();
  let dir = '';
  let seeded: Seeded;
  beforeAll(async () => {
    ({ dir, seeded } = await seed({ GLUCOGUARD_MASTER_KEY: k1 }));
    dirs.push(dir);
  }, 60_000);

  test('the new key comes from the operator; afterwards the server starts only with it', async () => {
    expect(() => rotateMasterKey({ config: { dataDir: dir, masterKey: k1 } })).toThrow(/give the new key with --new-key-file/);
    expect(() => rotateMasterKey({ config: { dataDir: dir, masterKey: k1 }, newKey: 'c2hvcnQ=' })).toThrow(/32 bytes, base64/);
    expect(() => rotateMasterKey({ config: { dataDir: dir, masterKey: k1 }, newKey: k1 })).toThrow(/is the current one/);
    expect(existsSync(path.join(dir, 'keys', 'rotation.json'))).toBe(false);
    const k2 = newKey();
    const result = rotateMasterKey({ config: { dataDir: dir, masterKey: k1 }, newKey: k2 });
    expect(result).toMatchObject({ held: 'config', newKey: k2 });
    expect(existsSync(masterKeyPath(dir))).toBe(false); // no key file is made for a configured key
    await expect(startTestApp({ GLUCOGUARD_MASTER_KEY: k1 }, dir)).rejects.toThrow(/does not open with this master key: the master key was rotated/);
    await expectIntact(dir, seeded, { GLUCOGUARD_MASTER_KEY: k2 });
  }, 60_000);
});

describe('with an upstream FHIR server (no embedded store)', () => {
  test('the rotation seals the root only; the proxy starts on the new key and still derives the same pseudonyms and signing keys', async () => {
    const upstream = await startUpstreamFhirServer();
    try {
      const env = { UPSTREAM_FHIR_URL: upstream.url };
      const t = await startTestApp(env);
      dirs.push(t.dataDir);
      const pseudonym = t.app.consent.keys.pseudonym('p-upstream');
      const jwks = t.app.smart.keys.jwks();
      await t.app.close();
      const result = rotateMasterKey({ config: { dataDir: t.dataDir } });
      expect(result.dataKeys).toBeUndefined();
      const again = await startTestApp(env, t.dataDir);
      try {
        expect(again.app.consent.keys.pseudonym('p-upstream')).toBe(pseudonym);
        expect(again.app.smart.keys.jwks()).toEqual(jwks);
      } finally {
        await again.app.close();
      }
    } finally {
      await upstream.close();
    }
  }, 60_000);
});

describe('the key root check', () => {
  test('a data directory refuses a key whose root is not the one it was made with, store or no store', () => {
    const dir = tempDir('gg-rootcheck-');
    dirs.push(dir);
    const k1 = newKey();
    expect(describeServerKeys({ dataDir: dir }).lines).toEqual([expect.stringMatching(/^master key: none yet/)]);
    expect(existsSync(masterKeyPath(dir))).toBe(false); // status makes no key
    expect(loadServerKeys({ dataDir: dir, masterKey: k1 }).root).toBe(k1); // first start records the check
    expect(() => loadServerKeys({ dataDir: dir, masterKey: newKey() })).toThrow(/does not match this data directory .*root\.check records another key root/);
    expect(loadServerKeys({ dataDir: dir, masterKey: k1 }).root).toBe(k1);
  });

  test('with root.check lost, a wrong key is refused by the store and records nothing: the right key still starts', async () => {
    const k1 = newKey();
    const { dir } = await seed({ GLUCOGUARD_MASTER_KEY: k1 });
    dirs.push(dir);
    const check = path.join(dir, 'keys', 'root.check');
    const recorded = readFileSync(check, 'utf8');
    rmSync(check);
    expect(() => loadServerKeys({ dataDir: dir, masterKey: newKey() })).toThrow(/master key does not match this data directory .*was made with another key/);
    expect(existsSync(check)).toBe(false);
    expect(loadServerKeys({ dataDir: dir, masterKey: k1 }).root).toBe(k1);
    expect(readFileSync(check, 'utf8')).toBe(recorded);
  });

  test('a copy of a rotated data directory given the new key without its root.sealed refuses instead of deriving from the wrong root', () => {
    const dir = tempDir('gg-rootcheck-');
    dirs.push(dir);
    const k1 = newKey();
    const k2 = newKey();
    loadServerKeys({ dataDir: dir, masterKey: k1 });
    const copy = tempDir('gg-rootcheck-');
    dirs.push(copy);
    cpSync(dir, copy, { recursive: true });
    rotateMasterKey({ config: { dataDir: dir, masterKey: k1 }, newKey: k2 });
    expect(loadServerKeys({ dataDir: dir, masterKey: k2 }).root).toBe(k1);
    expect(() => loadServerKeys({ dataDir: copy, masterKey: k2 })).toThrow(/give the master key this directory was last used with .*or, if the key was rotated elsewhere .*copy that directory's keys\/root\.sealed here with the new key/);
    cpSync(path.join(dir, 'keys', 'root.sealed'), path.join(copy, 'keys', 'root.sealed'));
    expect(loadServerKeys({ dataDir: copy, masterKey: k2 }).root).toBe(k1);
  });
});

describe('a rotation stopped after each step', () => {
  const k1 = newKey();
  let fileDir = '';
  let configDir = '';
  let fileSeed: Seeded;
  let configSeed: Seeded;
  beforeAll(async () => {
    ({ dir: fileDir, seeded: fileSeed } = await seed({}));
    ({ dir: configDir, seeded: configSeed } = await seed({ GLUCOGUARD_MASTER_KEY: k1 }));
    dirs.push(fileDir, configDir);
  }, 120_000);

  const stopAt = (step: RotationStep) => (s: RotationStep) => {
    if (s === step) throw new Error(`stopped after ${s}`);
  };

  for (const step of STEPS) {
    test(`key file, stopped after ${step}: nothing starts until --resume finishes it`, async () => {
      const dir = tempDir('gg-rotate-');
      dirs.push(dir);
      cpSync(fileDir, dir, { recursive: true });
      const oldKey = readFileSync(masterKeyPath(dir), 'utf8').trim();
      expect(() => rotateMasterKey({ config: { dataDir: dir }, afterStep: stopAt(step) })).toThrow(`stopped after ${step}`);
      expect(() => loadServerKeys({ dataDir: dir })).toThrow(/did not finish: run `glucoguard keys rotate-master --resume`/);
      expect(describeServerKeys({ dataDir: dir }).problem).toMatch(/did not finish/);
      await expect(EmbeddedRepository.open({ dataDir: dir })).rejects.toThrow(/did not finish/);
      expect(() => rotateMasterKey({ config: { dataDir: dir } })).toThrow(/did not finish: run again with --resume/);
      rotateMasterKey({ config: { dataDir: dir }, resume: true });
      expect(existsSync(path.join(dir, 'keys', 'rotation.json'))).toBe(false);
      expect(existsSync(`${masterKeyPath(dir)}.next`)).toBe(false);
      expect(existsSync(path.join(dir, 'keys', 'root.sealed.next'))).toBe(false);
      const keys = loadServerKeys({ dataDir: dir });
      expect(keys.master).not.toBe(oldKey);
      expect(keys.root).toBe(fileSeed.root);
      await expectStoreOpens(dir);
      await expect(EmbeddedRepository.open({ dataDir: dir, masterKey: oldKey })).rejects.toThrow(/master key/);
    }, 60_000);
  }

  for (const step of STEPS.filter((s) => s !== 'master-key-next' && s !== 'master-key-moved')) {
    test(`configured key, stopped after ${step}: --resume needs the same new key, then finishes`, async () => {
      const dir = tempDir('gg-rotate-');
      dirs.push(dir);
      cpSync(configDir, dir, { recursive: true });
      const k2 = newKey();
      expect(() => rotateMasterKey({ config: { dataDir: dir, masterKey: k1 }, newKey: k2, afterStep: stopAt(step) })).toThrow(`stopped after ${step}`);
      expect(() => loadServerKeys({ dataDir: dir, masterKey: k1 })).toThrow(/did not finish/);
      expect(() => rotateMasterKey({ config: { dataDir: dir, masterKey: k1 }, resume: true })).toThrow(/give the same key again with --new-key-file/);
      expect(() => rotateMasterKey({ config: { dataDir: dir, masterKey: k1 }, newKey: newKey(), resume: true })).toThrow(/not the key the interrupted rotation started with/);
      if (step === 'journal') {
        // nothing re-wrapped yet: starting over with the new key configured would lose the old root
        expect(() => rotateMasterKey({ config: { dataDir: dir, masterKey: k2 }, newKey: k2, resume: true })).toThrow(/already holds the new key/);
      }
      rotateMasterKey({ config: { dataDir: dir, masterKey: k1 }, newKey: k2, resume: true });
      expect(loadServerKeys({ dataDir: dir, masterKey: k2 }).root).toBe(configSeed.root);
      expect(() => loadServerKeys({ dataDir: dir, masterKey: k1 })).toThrow(/does not open with this master key/);
      await expectStoreOpens(dir, k2);
    }, 60_000);
  }

  test('configured key: the operator may switch the configuration to the new key before resuming once the store was re-wrapped', async () => {
    const dir = tempDir('gg-rotate-');
    dirs.push(dir);
    cpSync(configDir, dir, { recursive: true });
    const k2 = newKey();
    expect(() => rotateMasterKey({ config: { dataDir: dir, masterKey: k1 }, newKey: k2, afterStep: stopAt('store') })).toThrow('stopped after store');
    rotateMasterKey({ config: { dataDir: dir, masterKey: k2 }, newKey: k2, resume: true });
    expect(loadServerKeys({ dataDir: dir, masterKey: k2 }).root).toBe(configSeed.root);
    await expectStoreOpens(dir, k2);
  }, 60_000);
});
