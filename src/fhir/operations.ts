/**
 * Standard FHIR operations the facade offers: `Patient/ID/$everything`, `Observation/$lastn` and
 * `[type]/ID/$meta`. Each is built from the router's own read and `searchAll`, so the policy
 * (scopes, consent) and every outbound guard (integrity) apply to their output exactly as to a read.
 */
import type { Bundle, Meta, Observation, Parameters, Resource } from '@medplum/fhirtypes';
import { badRequest, isGlucoGuardError } from '../errors.js';
import type { FhirRouter, OperationHandler } from './router.js';
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

  return [everything, lastn, meta];
}
