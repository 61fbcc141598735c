/**
 * Standard FHIR operations the facade offers: `Patient/ID/$everything`, `Observation/$lastn`,
 * `[type]/ID/$meta` and `[type]/$validate`, `[type]/ID/$validate`, and `Patient/$match`
 * (src/fhir/patient-match.ts). Each is built from the router's
 * own read, `searchAll` and write checks, so the policy (scopes, consent) and every outbound guard
 * (integrity) apply to them exactly as to a read or a write.
 */
import type { Bundle, BundleEntry, Meta, Observation, OperationOutcome, OperationOutcomeIssue, Parameters, Resource } from '@medplum/fhirtypes';
import { badRequest, isGlucoGuardError } from '../errors.js';
import { operationOutcome } from './outcomes.js';
import { pairsToQuery, queryPairs, toQueryString, type PagePosition } from './paging.js';
import { patientMatchOperation } from './patient-match.js';
import { preferLenient, requireFhirJson, type FhirRouter, type OperationHandler } from './router.js';
import type { FhirRequest, FhirResponse } from './types.js';

/**
 * Types gathered by $everything, in the order pages walk them: the Patient compartment types the
 * facade serves (not the access log), each with the date parameter `start` and `end` bound (the
 * care date; a Device has none and is always in).
 */
const EVERYTHING: Record<string, string | undefined> = {
  Observation: 'date', Device: undefined, MedicationAdministration: 'effective-time', DiagnosticReport: 'date', ServiceRequest: 'authored', Consent: 'date',
};
const EVERYTHING_TYPES = Object.keys(EVERYTHING);
/** Where the next page of $everything starts, kept in its page token beside the query: the patient and the type. */
const AT_PATIENT = '_everythingOf';
const AT_TYPE = '_everythingType';
const FHIR_DATE = /^\d{4}(-\d{2}(-\d{2})?)?$/;
/** The parameters of $everything (patient-operation-everything.html) the facade takes. */
const EVERYTHING_PARAMS = ['start', 'end', '_since', '_type', '_count'];
/**
 * Search result parameters $lastn has its own answer to (the newest `max` readings of each code,
 * newest first, one Bundle): given with it they would be silently overruled, so they are refused.
 * Every other parameter is an Observation search parameter that narrows the readings (date, status,
 * device…) and is checked as a search's is.
 */
const LASTN_REFUSED = new Set(['_sort', '_count', '_offset', '_include', '_revinclude', '_summary', '_elements', '_total', '_contained', '_containedType', '_pageToken']);

/**
 * Refuses (400) a parameter the operation does not define, as a search refuses an unknown one:
 * ignored, it would change the answer without a word (a misspelt `start` gives the default period).
 * With `Prefer: handling=lenient` it is left out. `_format` and `_pretty` are the router's; `also`
 * are parameters the operation takes without offering them (its page tokens).
 */
export function onlyParameters(req: FhirRequest, operation: string, known: readonly string[], also: readonly string[] = []): void {
  if (preferLenient(req)) return;
  const unknown = Object.keys(req.query).find((k) => k !== '_format' && k !== '_pretty' && !known.includes(k) && !also.includes(k));
  if (unknown === undefined) return;
  const takes = known.length ? `it takes ${known.join(', ')}` : 'it takes none';
  throw badRequest(`${unknown.slice(0, 64)} is not a parameter of $${operation} (${takes})`, unknown.slice(0, 64));
}

export function standardOperations(fhir: FhirRouter, fhirBase: string): OperationHandler[] {
  const entry = (r: Resource) => ({ fullUrl: `${fhirBase}/${r.resourceType}/${r.id}`, resource: r, search: { mode: 'match' as const } });
  const readThrough = (req: FhirRequest, type: string, id: string): Promise<FhirResponse> =>
    fhir.handle({ method: 'GET', path: `${type}/${id}`, query: {}, headers: {}, access: req.access });

  /**
   * `Patient/ID/$everything` (patient-operation-everything.html) with `start`/`end` (care dates),
   * `_since`, `_type` and `_count`, paged: the Patient on the first page, then each type's resources
   * in turn, a page filled across types. A `next` link carries a page token bound to the requester
   * (the type and position to go on from: as a search's, past the last match examined), and appears
   * only when something visible is left.
   */
  const everything: OperationHandler = {
    name: 'everything',
    levels: ['instance'],
    resourceTypes: ['Patient'],
    methods: ['GET'],
    async handle(req, target) {
      onlyParameters(req, 'everything', EVERYTHING_PARAMS, ['_pageToken']);
      let query: Record<string, string | string[]> = Object.fromEntries(Object.entries(req.query).filter(([k]) => EVERYTHING_PARAMS.includes(k))) as Record<string, string | string[]>;
      let at: { type: number } & PagePosition = { type: 0, offset: 0 };
      const token = req.query._pageToken;
      if (typeof token === 'string') {
        const state = fhir.pageTokens.open(req.access, token);
        query = pairsToQuery(state.query.filter(([k]) => k !== AT_PATIENT && k !== AT_TYPE));
        const of = state.query.find(([k]) => k === AT_PATIENT)?.[1];
        const type = Number(state.query.find(([k]) => k === AT_TYPE)?.[1]);
        if (of !== target.id || !Number.isInteger(type)) throw badRequest('Invalid _pageToken', '_pageToken');
        at = { type, offset: state.offset, ...(state.after !== undefined ? { after: state.after } : {}) };
      }
      const patient = await readThrough(req, 'Patient', target.id!);
      if (patient.status !== 200) return patient; // absent and not allowed look the same (404)
      const one = (name: string): string | undefined => {
        const v = query[name];
        if (Array.isArray(v)) throw badRequest(`${name} may be given once`, name);
        return v;
      };
      const wanted = one('_type')?.split(',') ?? EVERYTHING_TYPES;
      for (const t of wanted) if (!EVERYTHING_TYPES.includes(t)) throw badRequest(`_type ${t.slice(0, 64)} is not part of $everything here`, '_type');
      const start = one('start');
      const end = one('end');
      const since = one('_since');
      for (const [name, v] of [['start', start], ['end', end]] as const) if (v !== undefined && !FHIR_DATE.test(v)) throw badRequest(`${name} must be a date (YYYY, YYYY-MM or YYYY-MM-DD)`, name);
      if (since !== undefined && Number.isNaN(Date.parse(since))) throw badRequest('_since must be an instant', '_since');
      const count = fhir.pageSize(query);
      const searchOf = (type: string): Record<string, string | string[]> => {
        const dateParam = EVERYTHING[type];
        const dates = dateParam ? [...(start ? [`ge${start}`] : []), ...(end ? [`le${end}`] : [])] : [];
        return { patient: `Patient/${target.id}`, ...(dates.length ? { [dateParam!]: dates } : {}), ...(since ? { _lastUpdated: `ge${since}` } : {}) };
      };
      // A type the requester may not search at all is simply not part of "everything" for them.
      const pageOf = async (type: string, from: PagePosition, n: number) => {
        try {
          return await fhir.searchPage(req.access, type, searchOf(type), from, n);
        } catch (err) {
          if (isGlucoGuardError(err, 'ERR_FORBIDDEN')) return { resources: [], issues: [], hasMore: false, next: from };
          throw err;
        }
      };
      const resources: Resource[] = token === undefined ? [patient.body as Resource] : [];
      // what the guards said of the pages read (a version withheld by the integrity check)
      const issues: OperationOutcomeIssue[] = [];
      let taken = 0;
      let next: { type: number } & PagePosition | undefined;
      for (let i = at.type; i < wanted.length; i++) {
        const from: PagePosition = i === at.type ? { offset: at.offset, ...(at.after !== undefined ? { after: at.after } : {}) } : { offset: 0 };
        if (taken === count) {
          // the page is full: the next one starts at the first type with something visible left
          if ((await pageOf(wanted[i]!, from, 1)).resources.length) {
            next = { type: i, ...from };
            break;
          }
          continue;
        }
        const page = await pageOf(wanted[i]!, from, count - taken);
        resources.push(...page.resources);
        issues.push(...page.issues);
        taken += page.resources.length;
        if (page.hasMore) {
          next = { type: i, ...page.next };
          break;
        }
      }
      const firstPage = queryPairs(query);
      // a later page's self link is the page token it was asked with
      const self = typeof token === 'string'
        ? `${fhirBase}/Patient/${target.id}/$everything?_pageToken=${encodeURIComponent(token)}`
        : `${fhirBase}/Patient/${target.id}/$everything${firstPage.length ? `?${toQueryString(firstPage)}` : ''}`;
      const link = [{ relation: 'self', url: self }];
      if (next) {
        const { type, ...position } = next;
        const state = { query: [...firstPage, [AT_PATIENT, target.id!], [AT_TYPE, String(type)]] as [string, string][], ...position };
        link.push({ relation: 'next', url: `${fhirBase}/Patient/${target.id}/$everything?_pageToken=${fhir.pageTokens.issue(req.access, state)}` });
      }
      const bundle: Bundle = { resourceType: 'Bundle', type: 'searchset', link, entry: [...resources.map(entry), ...outcomeEntry(issues)] };
      return { status: 200, body: bundle };
    },
  };

  const lastn: OperationHandler = {
    name: 'lastn',
    levels: ['type'],
    resourceTypes: ['Observation'],
    methods: ['GET'],
    async handle(req) {
      const one = (name: string): string | undefined => {
        const v = req.query[name];
        if (Array.isArray(v)) throw badRequest(`${name} may be given once with $lastn${name === 'code' ? ' (list the codes with commas)' : ''}`, name);
        return v;
      };
      const max = Number(one('max') ?? '1');
      if (!Number.isInteger(max) || max < 1 || max > 1000) throw badRequest('max must be an integer from 1 to 1000', 'max');
      if (!Object.keys(req.query).some((k) => ['patient', 'subject'].includes(k.split(':')[0]!))) throw badRequest('$lastn needs patient', 'patient');
      // the other parameters narrow the readings as in a search (checked there: an unknown one is a 400, left out with Prefer: handling=lenient)
      const query: Record<string, string | string[]> = {};
      for (const [name, value] of Object.entries(req.query)) {
        if (name === 'max' || name === 'code' || name === '_format' || name === '_pretty' || value === undefined) continue;
        if (LASTN_REFUSED.has(name.split(':')[0]!)) throw badRequest(`${name} is not supported with $lastn: it answers the newest max readings of each code, newest first`, name);
        query[name] = value;
      }
      query._sort = '-date';
      // With codes, each code's newest `max` readings are one short search each (a year of CGM
      // readings is ~105,000 Observations, every one of which the walk below would read); without,
      // every reading of the patient is walked, newest first, to find the codes.
      const codes = one('code')?.split(',').filter(Boolean);
      const issues: OperationOutcomeIssue[] = [];
      const lenient = preferLenient(req);
      const pages = codes && await Promise.all(codes.map((code) => fhir.searchPage(req.access, 'Observation', { ...query, code }, { offset: 0 }, max, { lenient })));
      for (const page of pages ?? []) issues.push(...page.issues);
      const observations = (pages ? pages.flatMap((page) => page.resources) : await fhir.searchAll(req.access, 'Observation', query, issues, { lenient })) as Observation[];
      const once = new Set<string>();
      const perCode = new Map<string, number>();
      const kept = observations.filter((o) => {
        if (once.has(o.id!)) return false; // two code values for the same code
        once.add(o.id!);
        const c = o.code?.coding?.[0];
        const key = c ? `${c.system ?? ''}|${c.code ?? ''}` : o.code?.text ?? '';
        const n = (perCode.get(key) ?? 0) + 1;
        perCode.set(key, n);
        return n <= max;
      });
      return { status: 200, body: { resourceType: 'Bundle', type: 'searchset', entry: [...kept.map(entry), ...outcomeEntry(issues)] } };
    },
  };

  const meta: OperationHandler = {
    name: 'meta',
    levels: ['instance'],
    methods: ['GET'],
    async handle(req, target) {
      onlyParameters(req, 'meta', []);
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

/** The guards' issues about a searchset an operation answers, as its `search.mode = outcome` entry (none when there are none). */
function outcomeEntry(issues: OperationOutcomeIssue[]): BundleEntry[] {
  return issues.length ? [{ resource: operationOutcome(issues), search: { mode: 'outcome' } }] : [];
}
