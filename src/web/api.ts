/**
 * The small JSON API the two apps need beyond FHIR, under `/apps/api/` (bearer token of the app):
 *
 * - `GET grantees[?name=]` (patient): clinicians, organizations and the patient's own relatives
 *   (RelatedPersons whose `patient` is them) the patient can grant access to — those with an identity
 *   on chain — as `{ grantees, complete }`. A patient token cannot search Practitioner/Organization
 *   through the facade (no patient link: fail closed), so the directory is served here. A long
 *   directory is cut (GRANTEE_LIMITS, `complete: false`): the portal then asks for part of a name
 *   (`name`, matched as FHIR `name:contains`).
 * - `GET access?patient=ID` (clinician): the requester's own Consents from that patient (who granted,
 *   until when, status). Never another grantee's.
 * - `GET key-safety` (patient): the patient's signing key (custodial or own wallet), how it is
 *   protected, whether it is backed up (recovery code, guardians on chain), the people of the record.
 * - `POST key/recovery-code` → `{ code }` once; `POST key/recover-with-code { code }` (after a reset password).
 * - `PUT guardians { guardians: [address | RelatedPerson/ID | Practitioner/ID], threshold }` → done, or
 *   typed data for the patient's wallet, whose signature comes back by `POST guardians/sign { signature }`.
 * - `POST password { current, password }`: changes the sign-in password and re-wraps the custodial key;
 *   the user's other sessions end (their tokens are refused), this one goes on.
 * - `POST recovery` → a new key and the `Recover` typed data for the guardians;
 *   `GET recovery` → the recovery waiting for guardian signatures (`{ recovery: null }` when none), so
 *   the portal can come back to it; `POST recovery/complete { signatures }` relays their signatures.
 */
import { Operator } from '@medplum/core';
import type { Consent, HumanName, Organization, Practitioner, RelatedPerson } from '@medplum/fhirtypes';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { forbidden, badRequest, isGlucoGuardError, notFound, tooLarge, unsupportedMediaType, type GlucoGuardError } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import type { Consent as ConsentModule } from '../consent/index.js';
import type { GuardianOutcome } from '../consent/keys/guardians.js';
import { requesterOf } from '../consent/requester.js';
import { consentTerms, grantIdOf } from '../consent/terms.js';
import type { Logger } from '../log.js';
import type { Repository } from '../repository/port.js';
import type { Smart } from '../smart/index.js';
import { verifyPassword } from '../smart/passwords.js';

export interface WebApiDeps {
  smart: Smart;
  repository: Repository;
  consent: ConsentModule;
  logger: Logger;
  now?: () => number;
}

/** A grant as the apps show it. */
export interface GrantView {
  consent: string;
  grantId?: string;
  /** pending (not yet on chain), active, not-started, expired, revoked. */
  state: 'pending' | 'active' | 'not-started' | 'expired' | 'revoked';
  grantedBy: string;
  grantedByName?: string;
  recorded?: string;
  accessFrom: string;
  accessTo: string;
  dataFrom: string;
  dataTo: string;
  purposes: string[];
  classes: string[];
  /**
   * The Consent's own bound when it is a date without a time (`2027-01-01`): the whole of that day
   * counts (terms.ts), so the apps show "until the end of 1 Jan 2027" instead of an instant, and
   * the calendar date whatever the reader's time zone.
   */
  accessToDate?: string;
  dataFromDate?: string;
  dataToDate?: string;
}

/**
 * How far `GET grantees` looks. Registration is checked per resource on chain, so a directory of
 * thousands is not read whole for every visit: past `scan` Practitioners (or Organizations) or
 * `list` registered ones the answer says `complete: false` and the portal searches by name.
 */
export const GRANTEE_LIMITS = { page: 100, scan: 2000, list: 200 };

const ID = /^[A-Za-z0-9\-.]{1,64}$/;

export function webApiRouter(deps: WebApiDeps): Router {
  const router = express.Router();
  router.use(express.json({ limit: '16kb' }));
  // a body of another type (a form post) would be read as no body at all ("current and password are required")
  router.use((req: Request, res: Response, next: NextFunction) => {
    if (!req.headers['content-type'] || req.is('application/json') !== false) return next(); // JSON, or no body
    refuse(res, unsupportedMediaType('The request body must be JSON (Content-Type: application/json)'));
  });
  const now = deps.now ?? Date.now;
  const handle = (fn: (req: Request, access: AccessContext) => Promise<unknown>) => async (req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    try {
      const access = await deps.smart.authenticate(req.headers as Record<string, string | undefined>, req.originalUrl);
      res.json(await fn(req, access));
    } catch (err) {
      if (isGlucoGuardError(err)) {
        if ('headers' in err && typeof err.headers === 'object') res.set(err.headers as Record<string, string>);
        refuse(res, err);
        return;
      }
      deps.logger.error({ err }, 'web api failed');
      res.status(500).json({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: 'internal error' }] });
    }
  };
  const patientOf = (access: AccessContext): string => {
    const requester = requesterOf(access);
    if (requester.kind !== 'patient' || !requester.patientId) throw forbidden('Only a patient can use this');
    return requester.patientId;
  };

  router.get('/grantees', handle(async (req, access) => {
    const patientId = patientOf(access);
    const name = typeof req.query.name === 'string' ? req.query.name.trim() : '';
    if (name.length > 100) throw badRequest('name must be at most 100 characters', 'name');
    return granteeDirectory(deps, patientId, name);
  }));

  router.get('/access', handle(async (req, access) => {
    const patient = typeof req.query.patient === 'string' ? req.query.patient : '';
    if (!ID.test(patient)) throw badRequest('patient must be a Patient id', 'patient');
    const requester = requesterOf(access);
    if (requester.kind === 'patient' && requester.patientId !== patient) throw forbidden();
    const mine = new Set(requester.refs);
    const consents = (await deps.consent.service.list(patient)).filter((c) => {
      try {
        return requester.kind !== 'grantee' || mine.has(consentTerms(c).actor);
      } catch {
        return false;
      }
    });
    const names = new Map<string, string | undefined>();
    const grants: GrantView[] = [];
    for (const c of consents) {
      const view = grantView(c, now());
      if (!view) continue;
      if (!names.has(view.grantedBy)) names.set(view.grantedBy, await displayName(deps.repository, view.grantedBy));
      grants.push({ ...view, grantedByName: names.get(view.grantedBy) });
    }
    grants.sort((a, b) => b.accessTo.localeCompare(a.accessTo));
    return { patient, grants };
  }));

  router.get('/key-safety', handle(async (_req, access) => {
    const patientId = patientOf(access);
    const key = deps.consent.keys.get(patientId);
    const protection = await deps.consent.keys.protection(patientId, access);
    // People of the patient's record who can act for them (RelatedPerson); null when the repository cannot say.
    const related = await relatedPersonsOf(deps.repository, patientId);
    const relatedPeople = related ? await Promise.all(related.map(async (r) => ({
      reference: `RelatedPerson/${r.id}`, name: nameOf(r) ?? `RelatedPerson/${r.id}`,
      registered: (await deps.consent.identity.granteesOf(`RelatedPerson/${r.id}`)).length > 0,
    }))) : null;
    const onChain = key ? await deps.consent.guardians.current(patientId) : { guardians: [], threshold: 0 };
    const names = new Map((relatedPeople ?? []).map((r) => [r.reference, r.name]));
    const guardians = await Promise.all(onChain.guardians.map(async (g) => ({
      ...g, name: g.reference ? names.get(g.reference) ?? await displayName(deps.repository, g.reference) ?? g.reference : undefined,
    })));
    const recoveryCode = protection?.recoveryCodeCreated ?? null;
    return {
      key: key ? { address: key.address, custodial: key.custodial } : null,
      protection: protection?.protection ?? null,
      locked: protection?.locked === true,
      backup: {
        recoveryCodeCreated: recoveryCode,
        guardians: guardians.length,
        threshold: onChain.threshold,
        // Backed up: a lost password (recovery code) or a lost key file (guardians on chain) can be overcome.
        backedUp: key?.custodial === true && (recoveryCode !== null || onChain.threshold > 0),
      },
      recovery: { guardians, threshold: onChain.threshold, waiting: (await deps.consent.guardians.pendingRecovery(patientId)) !== undefined },
      related: relatedPeople,
      // Kept for older portal pages: RelatedPersons who can share on the patient's behalf.
      guardians: relatedPeople,
      features: { guardianConsent: true, guardianKeyRecovery: true, custodialBackupStatus: true },
    };
  }));

  router.post('/key/recovery-code', handle(async (_req, access) => {
    const code = await deps.consent.keys.createRecoveryCode(patientOf(access), access);
    return { code };
  }));

  router.post('/key/recover-with-code', handle(async (req, access) => {
    const code = (req.body as { code?: unknown } | undefined)?.code;
    if (typeof code !== 'string' || code.length > 100) throw badRequest('code must be the recovery code', 'code');
    await deps.consent.keys.recoverWithCode(patientOf(access), code, access);
    return { recovered: true };
  }));

  router.put('/guardians', handle(async (req, access) => {
    const body = (req.body ?? {}) as { guardians?: unknown; threshold?: unknown };
    return guardianAnswer(await deps.consent.guardians.set(patientOf(access), body.guardians, body.threshold, access));
  }));

  router.post('/guardians/sign', handle(async (req, access) => {
    const signature = (req.body as { signature?: unknown } | undefined)?.signature;
    return guardianAnswer(await deps.consent.guardians.submitSignature(patientOf(access), signature));
  }));

  // Password change: the key is re-wrapped under the new password first (nothing changes if the
  // current password is wrong), then the sign-in; this session keeps signing with the new unlock,
  // and every other session of the user ends (their access and refresh tokens are refused).
  router.post('/password', handle(async (req, access) => {
    const patientId = patientOf(access);
    const body = (req.body ?? {}) as { current?: unknown; password?: unknown };
    if (typeof body.current !== 'string' || typeof body.password !== 'string') throw badRequest('current and password are required');
    if (body.password.length < 8 || body.password.length > 200) throw badRequest('The new password must be 8 to 200 characters', 'password');
    await deps.consent.keys.sessions.countAttempt(deps.consent.keys.pseudonym(patientId));
    const user = access.subject ? deps.smart.store.getUser(access.subject) : undefined;
    if (!user || user.fhirUser !== `Patient/${patientId}` || !(await verifyPassword(body.current, user.passwordHash))) {
      throw forbidden('The current password is not right');
    }
    let rewrapped = true;
    try {
      await deps.consent.keys.changePassword(patientId, body.current, body.password);
    } catch (err) {
      // A key the current password does not open was locked by an earlier reset: it stays as it is.
      if (!isGlucoGuardError(err, 'ERR_FORBIDDEN')) throw err;
      rewrapped = false;
    }
    try {
      await deps.smart.store.setPassword(user.username, body.password);
    } catch (err) {
      if (rewrapped) await deps.consent.keys.changePassword(patientId, body.password, body.current);
      throw err;
    }
    const grantId = (access as { grantId?: string }).grantId;
    // whoever had the old password keeps nothing of it: the user's other sign-ins end here
    deps.smart.store.endOtherSessions(user.username, now(), grantId);
    if (grantId) {
      const unlock = await deps.consent.keys.deriveUnlock(patientId, body.password);
      await deps.consent.keys.sessions.put(grantId, deps.consent.keys.pseudonym(patientId), unlock, deps.smart.tokens.lifetimes.accessSeconds * 1000);
    }
    return { changed: true };
  }));

  router.post('/recovery', handle(async (_req, access) => deps.consent.guardians.startRecovery(patientOf(access), access)));

  // Guardians may take days to sign: the portal reopens the waiting request instead of making a new key.
  router.get('/recovery', handle(async (_req, access) => {
    const patientId = patientOf(access);
    const typedData = await deps.consent.guardians.pendingRecovery(patientId);
    if (!typedData) return { recovery: null };
    const { threshold } = await deps.consent.guardians.current(patientId);
    return { recovery: { newKey: typedData.message.newKey, threshold, typedData } };
  }));

  router.post('/recovery/complete', handle(async (req, access) => {
    const signatures = (req.body as { signatures?: unknown } | undefined)?.signatures;
    const result = await deps.consent.guardians.recover(patientOf(access), signatures);
    await deps.consent.decisions.changed();
    return result;
  }));
  // a body the JSON parser refuses (not JSON, too large) is answered as every other refusal here,
  // an OperationOutcome, not the server's generic `{"error": text}`
  router.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    const e = err as { status?: unknown; type?: unknown };
    const refusal = e?.status === 413 ? tooLarge('The request body is larger than 16 kB')
      : e?.status === 400 && e.type === 'entity.parse.failed' ? badRequest('The request body is not valid JSON') : undefined;
    if (!refusal) return next(err);
    refuse(res, refusal);
  });
  // a path (or method) this API does not have: an OperationOutcome too, not the server's `{"error": text}`
  router.use((_req: Request, res: Response) => refuse(res, notFound('No such request in the apps\' API')));
  return router;
}

/** Answers a refusal as every answer of this API is: an OperationOutcome, never cached. */
function refuse(res: Response, err: GlucoGuardError): void {
  res.status(err.status).set('Cache-Control', 'no-store').json({ resourceType: 'OperationOutcome', issue: err.issues });
}

/**
 * The registered relatives of the patient (their RelatedPersons), Practitioners and Organizations,
 * page by page through the repository (the chain knows identities only by a hash of their reference,
 * so the walk starts from the resources), up to GRANTEE_LIMITS; with `name`, only those whose name
 * contains it. Relatives come first, so a long clinician directory never cuts them off.
 */
async function granteeDirectory(deps: WebApiDeps, patientId: string, name: string): Promise<{ grantees: { reference: string; name: string; kind: string }[]; complete: boolean }> {
  const out = new Map<string, { reference: string; name: string; kind: string }>();
  let complete = true;
  const patient = `Patient/${patientId}`;
  const directories = [
    { type: 'RelatedPerson', kind: 'relative', filters: [{ code: 'patient', operator: Operator.EQUALS, value: patient }] },
    { type: 'Practitioner', kind: 'clinician', filters: [] },
    { type: 'Organization', kind: 'organization', filters: [] },
  ] as const;
  for (const { type, kind, filters } of directories) {
    const all = [...filters, ...(name ? [{ code: 'name', operator: Operator.CONTAINS, value: name }] : [])];
    for (let offset = 0; ;) {
      if (offset >= GRANTEE_LIMITS.scan || out.size >= GRANTEE_LIMITS.list) {
        complete = false;
        break;
      }
      const found = await deps.repository.search({ resourceType: type, filters: all, count: GRANTEE_LIMITS.page, offset });
      // another patient's relative is never offered, whatever a search answered (an upstream server's
      // `patient` may match more than the exact reference): checked on the resource itself
      const resources = (found.resources as (Practitioner | Organization | RelatedPerson)[])
        .filter((r) => r.resourceType !== 'RelatedPerson' || r.patient?.reference === patient);
      const registered = await Promise.all(resources.map(async (r) => (await deps.consent.identity.granteesOf(`${type}/${r.id}`)).length > 0));
      resources.forEach((r, i) => {
        const reference = `${type}/${r.id}`;
        if (registered[i] && out.size < GRANTEE_LIMITS.list) out.set(reference, { reference, name: nameOf(r) ?? reference, kind });
      });
      if (!found.hasMore || found.resources.length === 0) break;
      offset += found.resources.length;
    }
  }
  return { grantees: [...out.values()].sort((a, b) => a.name.localeCompare(b.name)), complete };
}

/** Status a person understands, from the Consent status and its period. */
export function grantView(c: Consent, now: number): Omit<GrantView, 'grantedByName'> | undefined {
  let terms;
  try {
    terms = consentTerms(c);
  } catch {
    return undefined;
  }
  const state: GrantView['state'] = c.status === 'inactive' || c.status === 'rejected' ? 'revoked'
    : c.status !== 'active' ? 'pending'
      : terms.notAfter <= now ? 'expired'
        : terms.notBefore > now ? 'not-started' : 'active';
  return {
    consent: `Consent/${c.id}`,
    grantId: grantIdOf(c),
    state,
    grantedBy: terms.performer,
    recorded: c.meta?.lastUpdated,
    accessFrom: iso(terms.notBefore),
    accessTo: iso(terms.notAfter),
    dataFrom: iso(terms.dataFrom),
    dataTo: iso(terms.dataTo),
    purposes: terms.purposes,
    classes: terms.classes,
    ...dateOnly('accessToDate', c.provision?.period?.end),
    ...dateOnly('dataFromDate', c.provision?.dataPeriod?.start),
    ...dateOnly('dataToDate', c.provision?.dataPeriod?.end),
  };
}

/** FHIR dates of year, month or day precision (as terms.ts reads them). */
const DATE_ONLY = /^\d{4}(-\d{2}(-\d{2})?)?$/;

function dateOnly<K extends string>(key: K, value: string | undefined): Partial<Record<K, string>> {
  return typeof value === 'string' && DATE_ONLY.test(value) ? { [key]: value } as Record<K, string> : {};
}

/**
 * RelatedPersons of the patient. A repository that does not answer `patient` for RelatedPerson
 * (400: an upstream server without it) has them read and matched here (exact reference), up to 1000.
 */
async function relatedPersonsOf(repository: Repository, patientId: string): Promise<RelatedPerson[] | undefined> {
  const reference = `Patient/${patientId}`;
  try {
    const found = await repository.search({ resourceType: 'RelatedPerson', filters: [{ code: 'patient', operator: Operator.EQUALS, value: reference }], count: 50, offset: 0 });
    return found.resources as RelatedPerson[];
  } catch (err) {
    if (!isGlucoGuardError(err, 'ERR_INVALID')) return undefined;
  }
  try {
    const all = await repository.search({ resourceType: 'RelatedPerson', filters: [], count: 1000, offset: 0 });
    return (all.resources as RelatedPerson[]).filter((r) => r.patient?.reference === reference).slice(0, 50);
  } catch {
    return undefined;
  }
}

async function displayName(repository: Repository, reference: string): Promise<string | undefined> {
  const [type, id] = reference.split('/');
  try {
    return nameOf(await repository.read<Practitioner>(type!, id!));
  } catch {
    return undefined;
  }
}

function nameOf(r: { name?: HumanName[] | string }): string | undefined {
  if (typeof r.name === 'string') return r.name;
  const n = r.name?.[0];
  if (!n) return undefined;
  return n.text ?? ([...(n.prefix ?? []), ...(n.given ?? []), n.family].filter(Boolean).join(' ') || undefined);
}

function guardianAnswer(outcome: GuardianOutcome) {
  return outcome.state === 'done'
    ? { state: 'done', guardians: outcome.guardians.guardians, threshold: outcome.guardians.threshold }
    : { state: 'awaiting-signature', typedData: outcome.typedData };
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
