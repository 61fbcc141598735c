/**
 * A grantee's Group search answers exactly the Groups a read by id would show it: those whose every
 * patient member granted it access covering Group (decision.ts), on either repository. Consent
 * narrows the search by Group's `member`, its Patient-compartment parameter, which the embedded
 * store indexes from generation 8; an older store answers the same until the rebuild.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Consent, Group, OperationOutcome } from '@medplum/fhirtypes';
import Database from 'better-sqlite3';
import request from 'supertest';
import { GRANT_ID_SYSTEM } from '../../src/consent/terms.js';
import { INDEX_GENERATION } from '../../src/repository/embedded/params.js';
import { storeFilePath } from '../../src/repository/embedded/store.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';
import { DAY, grant, patientToken, person, practitionerToken, registerIdentity } from './consent-helpers.js';

const now = Date.now();

type Start = () => Promise<{ env: Record<string, string>; upstream?: UpstreamFhirServer }>;
const BACKENDS: [string, Start][] = [
  ['embedded', async () => ({ env: {} })],
  ['upstream', async () => {
    const upstream = await startUpstreamFhirServer();
    return { env: { UPSTREAM_FHIR_URL: upstream.url }, upstream };
  }],
];

describe.each(BACKENDS)('a grantee\'s Group search on the %s repository', (adapter, start) => {
  let t: TestApp;
  let upstream: UpstreamFhirServer | undefined;
  let ana: string;
  let ben: string;
  let doc: string;
  let other: string;
  let anaGrant: string;
  const groups: Record<string, string> = {};
  const token = (practitioner: string) => practitionerToken(t.app, practitioner, undefined, ['openid', 'fhirUser', 'user/*.rs']);
  /** `purpose` '': no X-Purpose-Of-Use header. */
  const get = (url: string, bearer = token(doc), purpose = 'TREAT') => {
    const req = request(t.app.http).get(url).set('Authorization', `Bearer ${bearer}`);
    return purpose ? req.set('X-Purpose-Of-Use', purpose) : req;
  };
  /** The names of the Groups a search answered (as matches), sorted. */
  const found = async (url: string, bearer?: string, purpose?: string): Promise<string[]> => {
    const res = await get(url, bearer, purpose);
    expect(res.status).toBe(200);
    const ids = ((res.body as Bundle).entry ?? []).filter((e) => e.search?.mode === 'match').map((e) => e.resource!.id!);
    return ids.map((id) => Object.keys(groups).find((name) => groups[name] === id) ?? `unknown ${id}`).sort();
  };
  const group = async (name: string, members: string[]): Promise<void> => {
    const stored = await t.app.repository.create<Group>({
      resourceType: 'Group', type: 'person', actual: true, identifier: [{ system: 'urn:test:group', value: name }],
      member: members.map((reference) => ({ entity: { reference } })),
    });
    groups[name] = stored.resource.id!;
  };

  beforeAll(async () => {
    const backend = await start();
    upstream = backend.upstream;
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on', ...backend.env });
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
    doc = await person(t.app, 'Practitioner', 'Osei');
    other = await person(t.app, 'Practitioner', 'Lund');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    await registerIdentity(t.app, `Practitioner/${other}`);
    await group('ana', [`Patient/${ana}`]);
    await group('ben', [`Patient/${ben}`]);
    await group('anaAndBen', [`Patient/${ana}`, `Patient/${ben}`]);
    await group('anaWithDoc', [`Patient/${ana}`, `Practitioner/${doc}`]);
    await group('docOnly', [`Practitioner/${doc}`]);
    const base = { accessTo: now + DAY, dataFrom: now - DAY, dataTo: now };
    // Ana lets doc read Groups she is in; Ben lets doc read his readings, not Groups; Ana lets the other practitioner read readings only
    const granted = await grant(t.app, { ...base, patient: ana, actor: `Practitioner/${doc}`, classes: ['Group', 'Observation'] });
    expect(granted.status).toBe(201);
    anaGrant = (granted.body as Consent).identifier!.find((i) => i.system === GRANT_ID_SYSTEM)!.value!;
    expect((await grant(t.app, { ...base, patient: ben, actor: `Practitioner/${doc}`, classes: ['Observation'] })).status).toBe(201);
    expect((await grant(t.app, { ...base, patient: ana, actor: `Practitioner/${other}`, classes: ['Observation'] })).status).toBe(201);
  });
  afterAll(async () => {
    await t?.close();
    await upstream?.close();
  });

  test('finds the granted patient\'s Groups and not another patient\'s, nor one with an ungranted member', async () => {
    const sent = upstream?.requests.length ?? 0;
    expect(await found('/fhir/Group')).toEqual(['ana', 'anaWithDoc']);
    if (upstream) {
      // the upstream server was asked for the granted patient's Groups only: it answers `member` itself
      const asked = upstream.requests.slice(sent).filter((r) => r.method === 'GET' && r.url.startsWith('/fhir/Group?')).map((r) => decodeURIComponent(r.url));
      expect(asked).toEqual([expect.stringContaining(`member=Patient/${ana}`)]);
      expect(asked[0]).not.toContain(ben);
    }
    expect(await found(`/fhir/Group?member=Patient/${ana}`)).toEqual(['ana', 'anaWithDoc']);
    expect(await found(`/fhir/Group?member=Patient/${ben}`)).toEqual([]);
    expect(await found(`/fhir/Group?member=Patient/${ana},Patient/${ben}`)).toEqual(['ana', 'anaWithDoc']);
    expect(await found(`/fhir/Group?_id=${groups.ben},${groups.anaAndBen},${groups.ana}`)).toEqual(['ana']);
    expect(await found('/fhir/Group?identifier=urn:test:group|ben')).toEqual([]);
  });

  test('a member that is no patient still selects, among the Groups the grantee may see', async () => {
    expect(await found(`/fhir/Group?member=Practitioner/${doc}`)).toEqual(['anaWithDoc']);
    expect(await found(`/fhir/Group?member=Practitioner/${doc}&member=Patient/${ana}`)).toEqual(['anaWithDoc']);
  });

  test('answers by the same rule as a read by id, Group by Group', async () => {
    const searched = await found('/fhir/Group?_count=100');
    for (const [name, id] of Object.entries(groups)) {
      const read = await get(`/fhir/Group/${id}`);
      expect([name, read.status]).toEqual([name, searched.includes(name) ? 200 : 404]);
    }
  });

  test('the patient searching their own Groups gets those with no other patient in them', async () => {
    expect(await found('/fhir/Group', patientToken(t.app, ana), '')).toEqual(['ana', 'anaWithDoc']);
    expect(await found('/fhir/Group', patientToken(t.app, ben), '')).toEqual(['ben']);
  });

  test('fails closed: no Group without a grant covering Group, without a purpose, or once the grant is withdrawn', async () => {
    expect(await found('/fhir/Group', token(other))).toEqual([]);
    expect(await found(`/fhir/Group?member=Patient/${ana}`, token(other))).toEqual([]);
    const unregistered = await person(t.app, 'Practitioner', 'Nobody');
    expect(await found('/fhir/Group', token(unregistered))).toEqual([]);
    const noPurpose = await get('/fhir/Group', token(doc), '');
    expect(noPurpose.status).toBe(200);
    const entries = (noPurpose.body as Bundle).entry ?? [];
    expect(entries.filter((e) => e.search?.mode === 'match')).toEqual([]);
    expect(entries.some((e) => e.search?.mode === 'outcome')).toBe(true);
    const research = await get('/fhir/Group', token(doc), 'HRESCH');
    expect(research.status).toBe(403);
    expect((research.body as OperationOutcome).resourceType).toBe('OperationOutcome');
    // a chain selects by what the requester may read itself: not Ana's Patient record (no grant covers Patient)
    expect(await found('/fhir/Group?member:Patient.name=Rivera')).toEqual([]);
    await t.app.consent.decisions.withdraw(anaGrant);
    expect(await found('/fhir/Group')).toEqual([]);
    expect(await found(`/fhir/Group?member=Patient/${ana}`)).toEqual([]);
  });
});

describe('a grantee\'s Group search on an embedded store written before Groups were indexed', () => {
  let t: TestApp;
  let ana: string;
  let doc: string;
  const names = new Map<string, string>();
  const found = async (url: string): Promise<string[]> => {
    const res = await request(t.app.http).get(url)
      .set('Authorization', `Bearer ${practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs'])}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(res.status).toBe(200);
    return ((res.body as Bundle).entry ?? []).filter((e) => e.search?.mode === 'match').map((e) => names.get(e.resource!.id!) ?? 'unknown').sort();
  };

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    const ben = await person(t.app, 'Patient', 'Okafor');
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    for (const [name, members] of [['ana', [ana]], ['ben', [ben]], ['both', [ana, ben]]] as const) {
      const stored = await t.app.repository.create<Group>({ resourceType: 'Group', type: 'person', actual: true, member: members.map((m) => ({ entity: { reference: `Patient/${m}` } })) });
      names.set(stored.resource.id!, name);
    }
    expect((await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now, classes: ['Group'] })).status).toBe(201);
    // what a store of generation 7 is: no index rows for any Group, generation 7 recorded
    const db = new Database(storeFilePath(t.dataDir));
    const groupSeqs = "SELECT seq FROM versions WHERE type = 'Group'";
    expect(db.prepare(`SELECT count(*) FROM ix_ref WHERE seq IN (${groupSeqs})`).pluck().get()).toBeGreaterThan(0);
    db.prepare(`DELETE FROM ix_ref WHERE seq IN (${groupSeqs})`).run();
    db.prepare(`DELETE FROM ix_date WHERE seq IN (${groupSeqs})`).run();
    db.prepare("UPDATE versions SET ix = NULL WHERE type = 'Group'").run();
    db.prepare("UPDATE meta SET v = '7' WHERE k = 'index-generation'").run();
    db.close();
    await t.restart();
  });
  afterAll(async () => {
    await t?.close();
  });

  test('answers the same before the rebuild (member matched without its index) and after it', async () => {
    expect(t.app.indexGeneration?.()).toBe(7);
    expect(await found('/fhir/Group')).toEqual(['ana']);
    expect(await found(`/fhir/Group?member=Patient/${ana}`)).toEqual(['ana']);
    expect(await t.app.reindex!()).toMatchObject({ versions: 3, generation: INDEX_GENERATION });
    expect(t.app.indexGeneration?.()).toBe(8);
    expect(await found('/fhir/Group')).toEqual(['ana']);
    expect(await found(`/fhir/Group?member=Patient/${ana}`)).toEqual(['ana']);
  });
});
