/**
 * One data directory, two processes: a running server and an operator's `glucoguard consent revoke`
 * share the embedded KV file (the default without REDIS_URL). The withdrawal the command records is
 * in the server's KV as soon as the command ends, and its `consent:changed` message reaches the
 * server's subscribers — with the in-memory KV the command's process kept both to itself.
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Consent } from '@medplum/fhirtypes';
import request from 'supertest';
import { CHANGED_CHANNEL } from '../../src/consent/decisions.js';
import { GRANT_ID_SYSTEM } from '../../src/consent/terms.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { BIN, buildOnce, childEnv } from '../support/process.js';
import { DAY, grant, person, practitionerToken, registerIdentity } from './consent-helpers.js';

let t: TestApp;
let ana: string;
let doc: string;

beforeAll(async () => {
  buildOnce();
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  ana = await person(t.app, 'Patient', 'Rivera');
  doc = await person(t.app, 'Practitioner', 'Osei');
  await registerIdentity(t.app, `Practitioner/${doc}`);
}, 180_000);
afterAll(async () => t?.close());

/** `glucoguard <args>` in a process of its own on the test app's data directory (its chain node reached over RPC). */
function cli(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: childEnv({ GLUCOGUARD_DATA_DIR: t.dataDir, LOG_LEVEL: 'warn' }), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.once('exit', (status) => resolve({ status, stdout, stderr }));
  });
}

const readAsDoc = () => request(t.app.http).get(`/fhir/Patient/${ana}`).set('X-Purpose-Of-Use', 'TREAT')
  .set('Authorization', `Bearer ${practitionerToken(t.app, doc, ana, ['user/*.rs'])}`);

describe('the embedded KV shared by the server and the CLI', () => {
  test('a consent revoked by the CLI is withdrawn in the running server\'s KV and announced to it; the grantee is denied', async () => {
    const now = Date.now();
    const created = await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + 3 * DAY, dataFrom: now - 14 * DAY, dataTo: now, classes: ['Patient'] });
    expect(created.status).toBe(201);
    const consent = created.body as Consent;
    const grantId = consent.identifier!.find((i) => i.system === GRANT_ID_SYSTEM)!.value!;
    expect((await readAsDoc()).status).toBe(200); // permissions now cached in the server
    const heard: string[] = [];
    const unsubscribe = await t.app.kv.subscribe(CHANGED_CHANNEL, (m) => heard.push(m));
    const epochBefore = Number((await t.app.kv.get('consent:epoch')) ?? 0);

    const revoked = await cli(['consent', 'revoke', '--consent', consent.id!]);
    expect({ status: revoked.status, stderr: revoked.stderr }).toMatchObject({ status: 0 });
    expect(revoked.stdout).toMatch(/ inactive /);

    expect(await t.app.kv.get(`consent:withdrawn:${grantId}`)).toBe('1');
    expect(Number(await t.app.kv.get('consent:epoch'))).toBeGreaterThan(epochBefore);
    for (let i = 0; i < 100 && heard.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(heard.length).toBeGreaterThan(0);
    expect((await readAsDoc()).status).toBe(404);
    await unsubscribe();
  }, 120_000);
});
