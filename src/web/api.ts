/**
 * The small JSON API the two apps need beyond FHIR, under `/apps/api/` (bearer token of the app):
 *
 * - `GET grantees` (patient): clinicians and organizations the patient can grant access to — those
 *   with an identity on chain. A patient token cannot search Practitioner/Organization through the
 *   facade (no patient link: fail closed), so the directory is served here.
 * - `GET access?patient=ID` (clinician): the requester's own Consents from that patient (who granted,
 *   until when, status). Never another grantee's.
 * - `GET key-safety` (patient): the patient's signing key (custodial or own wallet) and guardians.
 */
import { Operator } from '@medplum/core';
import type { Consent, HumanName, Organization, Practitioner, RelatedPerson } from '@medplum/fhirtypes';
import express, { type Request, type Response, type Router } from 'express';
import { forbidden, badRequest, isGlucoGuardError } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import type { Consent as ConsentModule } from '../consent/index.js';
import { requesterOf } from '../consent/requester.js';
import { consentTerms, grantIdOf } from '../consent/terms.js';
import type { Logger } from '../log.js';
import type { Repository } from '../repository/port.js';
import type { Smart } from '../smart/index.js';

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
}

const ID = /^[A-Za-z0-9\-.]{1,64}$/;

export function webApiRouter(deps: WebApiDeps): Router {
  const router = express.Router();
  const now = deps.now ?? Date.now;
  const handle = (fn: (req: Request, access: AccessContext) => Promise<unknown>) => async (req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    try {
      const access = await deps.smart.authenticate(req.headers as Record<string, string | undefined>, req.originalUrl);
      res.json(await fn(req, access));
    } catch (err) {
      if (isGlucoGuardError(err)) {
        if ('headers' in err && typeof err.headers === 'object') res.set(err.headers as Record<string, string>);
        res.status(err.status).json({ resourceType: 'OperationOutcome', issue: err.issues });
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

  router.get('/grantees', handle(async (_req, access) => {
    patientOf(access);
    const out: { reference: string; name: string; kind: string }[] = [];
    for (const type of ['Practitioner', 'Organization'] as const) {
      const found = await deps.repository.search({ resourceType: type, filters: [], count: 100, offset: 0 });
      for (const r of found.resources as (Practitioner | Organization)[]) {
        const reference = `${type}/${r.id}`;
        if ((await deps.consent.identity.granteesOf(reference)).length === 0) continue;
        out.push({ reference, name: nameOf(r) ?? reference, kind: type === 'Practitioner' ? 'clinician' : 'organization' });
      }
    }
    return { grantees: out.sort((a, b) => a.name.localeCompare(b.name)) };
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
    // Guardians are RelatedPersons of the patient; a repository that cannot search them says so (null).
    const related = await deps.repository.search({
      resourceType: 'RelatedPerson', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${patientId}` }], count: 50, offset: 0,
    }).catch(() => undefined);
    return {
      key: key ? { address: key.address, custodial: key.custodial } : null,
      guardians: related ? (related.resources as RelatedPerson[]).map((r) => ({ reference: `RelatedPerson/${r.id}`, name: nameOf(r) ?? `RelatedPerson/${r.id}` })) : null,
      // What the server offers today; the apps show these plainly rather than pretend.
      features: { guardianConsent: true, guardianKeyRecovery: false, custodialBackupStatus: false },
    };
  }));
  return router;
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
  };
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

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
