/**
 * Standard FHIR operations the facade offers: `Patient/ID/$everything`, `Observation/$lastn`,
 * `[type]/ID/$meta` and `[type]/$validate`, `[type]/ID/$validate`, and `Patient/$match`
 * (src/fhir/patient-match.ts). Each is built from the router's
 * own read, `searchAll` and write checks, so the policy (scopes, consent) and every outbound guard
 * (integrity) apply to them exactly as to a read or a write.
 */
import type { Bundle, Meta, Observation, OperationOutcome, Parameters, Resource } from '@medplum/fhirtypes';
import { badRequest, isGlucoGuardError } from '../errors.js';
import { patientMatchOperation } from './patient-match.js';
import { requireFhirJson, type FhirRouter, type OperationHandler } from './router.js';
import type { FhirRequest, FhirResponse } from './types.js';

/** Types gathered by $everything: the Patient compartment types the facade serves (not the access log). */
const EVERYTHING_TYPES = ['Observation', 'Device', 'MedicationAdministration', 'DiagnosticReport', 'ServiceRequest', 'Consent'];

export function standardOperations(fhir: FhirRouter, fhirBase: string): OperationHandler[] {
  const entry = (r: Resource) => ({ fullUrl: `${fhirBase}/${r.resourceType}/${r.id}`, resource: r, search: { mode: 'match' as const } });
  const readThrough = (req: FhirRequest, type: string, id: string): Promise<FhirResponse> =>
    fhir.handle({ method: 'GET', path: `${type}/${id}`, query: {}, headers: {}, access: req.access });

  const everything: OperationHandler = {
    name: 'everything',
    levels: ['instance'],
    resourceTypes: ['Patient'],
    methods: ['GET'],
    async handle(req, target) {
      const patient = await readThrough(req, 'Patient', target.id!);
      if (patient.status !== 200) return patient; // absent and not allowed look the same (404)
      const wanted = typeof req.query._type === 'string' ? req.query._type.split(',') : EVERYTHING_TYPES;
      for (const t of wanted) if (!EVERYTHING_TYPES.includes(t)) throw badRequest(`_type ${t} is not part of $everything here`, '_type');
      const resources: Resource[] = [patient.body as Resource];
      for (const type of wanted) {
        try {
          resources.push(...(await fhir.searchAll(req.access, type, { patient: `Patient/${target.id}` })));
        } catch (err) {
          // A type the requester may not search at all is simply not part of "everything" for them.
          if (!isGlucoGuardError(err, 'ERR_FORBIDDEN')) throw err;
        }
      }
      const bundle: Bundle = { resourceType: 'Bundle', type: 'searchset', entry: resources.map(entry) };
      return { status: 200, body: bundle };
    },
  };

  const lastn: OperationHandler = {
    name: 'lastn',
    levels: ['type'],
    resourceTypes: ['Observation'],
    methods: ['GET'],
    async handle(req) {
      const one = (name: string): string | undefined => (typeof req.query[name] === 'string' ? (req.query[name] as string) : undefined);
      const max = Number(one('max') ?? '1');
      if (!Number.isInteger(max) || max < 1 || max > 1000) throw badRequest('max must be an integer from 1 to 1000', 'max');
      const patient = one('patient') ?? one('subject');
      if (!patient) throw badRequest('$lastn needs patient', 'patient');
      const query: Record<string, string> = { patient, _sort: '-date' };
      for (const p of ['code', 'category']) if (one(p)) query[p] = one(p)!;
      const observations = (await fhir.searchAll(req.access, 'Observation', query)) as Observation[];
      const perCode = new Map<string, number>();
      const kept = observations.filter((o) => {
        const c = o.code?.coding?.[0];
        const key = c ? `${c.system ?? ''}|${c.code ?? ''}` : o.code?.text ?? '';
        const n = (perCode.get(key) ?? 0) + 1;
        perCode.set(key, n);
        return n <= max;
      });
      return { status: 200, body: { resourceType: 'Bundle', type: 'searchset', entry: kept.map(entry) } };
    },
  };

  const meta: OperationHandler = {
    name: 'meta',
    levels: ['instance'],
    methods: ['GET'],
    async handle(req, target) {
      const read = await readThrough(req, target.resourceType!, target.id!);
      if (read.status !== 200) return read;
      const parameters: Parameters = { resourceType: 'Parameters', parameter: [{ name: 'return', valueMeta: (read.body as Resource).meta ?? ({} as Meta) }] };
      return { status: 200, body: parameters };
    },
  };

  const validate: OperationHandler = {
    name: 'validate',
    levels: ['type', 'instance'],
    methods: ['POST'],
    authorizesItself: true, // as the write the mode names (router.validateWrite)
    async handle(req, target) {
      const input = validateInput(req, target.resourceType!, target.id);
      const issues = await fhir.validateWrite(req.access, target.resourceType!, input.mode, { id: target.id, resource: input.resource, profiles: input.profiles });
      const outcome: OperationOutcome = {
        resourceType: 'OperationOutcome',
        issue: issues.length ? issues : [{ severity: 'information', code: 'informational', diagnostics: 'No issues found' }],
      };
      // 200 either way: the operation ran; its outcome's error issues say the content would be refused
      return { status: 200, body: outcome };
    },
  };

  return [everything, lastn, meta, validate, patientMatchOperation(fhir, fhirBase)];
}

const VALIDATION_MODES = new Set(['create', 'update', 'delete', 'profile']);

/**
 * The input of `$validate`: the body is the resource itself or a Parameters with `resource`,
 * `mode` and `profile`; `mode` and `profile` may come in the URL too. Mode `profile` is a
 * general check against the nominated profile (which it then requires); update and delete need an
 * instance, every mode but delete a resource of the URL's type.
 */
function validateInput(req: FhirRequest, type: string, id: string | undefined): { mode?: 'create' | 'update' | 'delete'; resource?: Resource; profiles: string[] } {
  if (req.body !== undefined || req.headers['content-type']) requireFhirJson(req);
  const body = req.body as Resource | undefined;
  let resource: Resource | undefined;
  const named: Record<string, string[]> = { mode: [], profile: [] };
  for (const name of ['mode', 'profile']) named[name]!.push(...[req.query[name] ?? []].flat());
  if (body?.resourceType === 'Parameters' && type !== 'Parameters') {
    for (const p of (body as Parameters).parameter ?? []) {
      if (p.name === 'resource') resource = p.resource;
      else if (p.name === 'mode' && p.valueCode !== undefined) named.mode!.push(p.valueCode);
      else if (p.name === 'profile' && (p.valueUri ?? p.valueCanonical) !== undefined) named.profile!.push((p.valueUri ?? p.valueCanonical)!);
      else throw badRequest(`$validate has no parameter "${String(p.name).slice(0, 64)}" of that type`, 'Parameters.parameter');
    }
  } else if (body !== undefined) {
    resource = body;
  }
  if (named.mode!.length > 1 || named.profile!.length > 1) throw badRequest('$validate takes one mode and one profile at most');
  const mode = named.mode![0];
  if (mode !== undefined && !VALIDATION_MODES.has(mode)) throw badRequest(`mode must be create, update, delete or profile, not "${mode.slice(0, 32)}"`, 'mode');
  if ((mode === 'update' || mode === 'delete') && !id) throw badRequest(`mode ${mode} needs a resource instance: POST [type]/[id]/$validate`, 'mode');
  if (mode === 'profile' && !named.profile!.length) throw badRequest('mode profile needs a profile', 'profile');
  if (mode !== 'delete') {
    if (!resource || typeof resource !== 'object' || Array.isArray(resource)) throw badRequest('$validate needs the resource to check', 'resource');
    if (resource.resourceType !== type) throw badRequest(`The resource to validate must be a ${type}`, 'resourceType');
  }
  const writeMode = mode === 'create' || mode === 'update' || mode === 'delete' ? mode : undefined;
  return { ...(writeMode ? { mode: writeMode } : {}), ...(resource ? { resource } : {}), profiles: named.profile! };
}
