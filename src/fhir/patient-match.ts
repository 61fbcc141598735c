/**
 * `POST Patient/$match` (https://hl7.org/fhir/R4/patient-operation-match.html): the Patients that
 * match a Patient given as input, each with a score and a grade, for an EHR interface that must
 * find "its" patient in the repository before it writes. Candidates come only from the requester's
 * own searches, through the same authorization, consent narrowing and guards as any search
 * (FhirRouter.searchAll): by each identifier, by family name with birth date or given name, and by
 * given name with birth date. So `$match` shows no patient a search would not.
 *
 * Each candidate is scored on what both sides give (names compared whole, ignoring case and
 * accents): an identifier, same system and value, 0.4; the birth date 0.2; a family name 0.15; a
 * given name 0.15; the gender 0.05; a phone, email or postal code 0.05. Birth dates that both give
 * and that differ are a conflict. Grades (the match-grade extension):
 * - certain: an identifier matches, and the birth date or the family name, with no conflict;
 * - probable: 0.5 or more (family, given and birth date), with no conflict;
 * - possible: 0.3 or more, or more than that with a conflict;
 * - below 0.3: not returned.
 * With `onlyCertainMatches`, the answer is the one certain match, or nothing when there are none or
 * several (the operation's definition: several potential matches are not returned under it).
 */
import type { Bundle, BundleEntry, ContactPoint, HumanName, OperationOutcomeIssue, Parameters, Patient } from '@medplum/fhirtypes';
import { badRequest } from '../errors.js';
import { foldText } from './folding.js';
import { operationOutcome } from './outcomes.js';
import { requireFhirJson, type FhirRouter, type OperationHandler } from './router.js';

export const MATCH_GRADE = 'http://hl7.org/fhir/StructureDefinition/match-grade';
export type MatchGrade = 'certain' | 'probable' | 'possible';

const DEFAULT_COUNT = 10;
const MAX_COUNT = 100;

interface MatchInput {
  patient: Patient;
  onlyCertain: boolean;
  count: number;
}

export function patientMatchOperation(fhir: FhirRouter, fhirBase: string): OperationHandler {
  return {
    name: 'match',
    levels: ['type'],
    resourceTypes: ['Patient'],
    methods: ['POST'],
    async handle(req) {
      requireFhirJson(req);
      const input = matchInput(req.body);
      const candidates = new Map<string, Patient>();
      for (const query of candidateQueries(input.patient)) {
        for (const found of await fhir.searchAll(req.access, 'Patient', query)) candidates.set(found.id!, found as Patient);
      }
      const scored = [...candidates.values()]
        .map((candidate) => ({ candidate, ...scoreOf(input.patient, candidate) }))
        .filter((s): s is typeof s & { grade: MatchGrade } => s.grade !== undefined)
        .sort((a, b) => b.score - a.score || a.candidate.id!.localeCompare(b.candidate.id!));
      const certain = scored.filter((s) => s.grade === 'certain');
      const shown = input.onlyCertain ? (certain.length === 1 ? certain : []) : scored.slice(0, input.count);
      const entry: BundleEntry[] = shown.map(({ candidate, score, grade }) => ({
        fullUrl: `${fhirBase}/Patient/${candidate.id}`,
        resource: candidate,
        search: { mode: 'match', score, extension: [{ url: MATCH_GRADE, valueCode: grade }] },
      }));
      if (input.onlyCertain && certain.length > 1) entry.push(outcomeEntry({ severity: 'information', code: 'multiple-matches', diagnostics: `${certain.length} certain matches: none is returned under onlyCertainMatches` }));
      const bundle: Bundle = { resourceType: 'Bundle', type: 'searchset', entry };
      return { status: 200, body: bundle };
    },
  };

  function matchInput(body: unknown): MatchInput {
    const parameters = body as Parameters | undefined;
    if (parameters?.resourceType !== 'Parameters') throw badRequest('$match takes a Parameters resource with the Patient to match in "resource"', 'Parameters');
    let patient: Patient | undefined;
    let onlyCertain = false;
    let count = DEFAULT_COUNT;
    for (const p of parameters.parameter ?? []) {
      if (p.name === 'resource' && !patient && p.resource?.resourceType === 'Patient') patient = p.resource;
      else if (p.name === 'onlyCertainMatches' && typeof p.valueBoolean === 'boolean') onlyCertain = p.valueBoolean;
      else if (p.name === 'count' && Number.isInteger(p.valueInteger) && p.valueInteger! >= 1 && p.valueInteger! <= MAX_COUNT) count = p.valueInteger!;
      else throw badRequest(`$match takes one resource (a Patient), onlyCertainMatches (boolean) and count (1 to ${MAX_COUNT}); "${String(p.name).slice(0, 64)}" is not one of them or has the wrong value`, 'Parameters.parameter');
    }
    if (!patient) throw badRequest('$match needs the Patient to match as parameter "resource"', 'Parameters.parameter');
    // the parts scoring reads, in the shape R4 gives them (the rest of the Patient is not looked at)
    const shaped = (['identifier', 'name', 'telecom', 'address'] as const).every((k) => patient![k] === undefined || (Array.isArray(patient![k]) && patient![k]!.every((v) => v && typeof v === 'object')))
      && (patient.name ?? []).every((n) => n.given === undefined || (Array.isArray(n.given) && n.given.every((g) => typeof g === 'string')))
      && ['birthDate', 'gender'].every((k) => patient![k as 'gender'] === undefined || typeof patient![k as 'gender'] === 'string');
    if (!shaped) throw badRequest('$match: the Patient\'s identifier, name, telecom and address must be lists of elements, given names strings, birthDate and gender strings', 'Parameters.parameter.resource');
    return { patient, onlyCertain, count };
  }
}

/** The searches that gather candidates; at least one is needed, or the input says too little to match. */
function candidateQueries(patient: Patient): Record<string, string>[] {
  const queries: Record<string, string>[] = [];
  for (const id of patient.identifier ?? []) {
    if (id.value) queries.push({ identifier: id.system ? `${escape(id.system)}|${escape(id.value)}` : escape(id.value) });
  }
  const family = namesOf(patient, 'family')[0];
  const given = namesOf(patient, 'given')[0];
  if (family && patient.birthDate) queries.push({ family: escape(family), birthdate: patient.birthDate });
  if (family && given) queries.push({ family: escape(family), given: escape(given) });
  if (given && patient.birthDate) queries.push({ given: escape(given), birthdate: patient.birthDate });
  if (!queries.length) throw badRequest('$match needs an identifier, or a name with a birth date or a given name, to look for', 'Parameters.parameter');
  return queries;
}

/** A search value with FHIR's escapes (search.html#escaping), so a comma in a name is not an OR. */
const escape = (value: string): string => value.replace(/[\\,$|]/g, (c) => `\\${c}`);

function namesOf(patient: Patient, part: 'family' | 'given'): string[] {
  return (patient.name ?? []).flatMap((n: HumanName) => (part === 'family' ? [n.family ?? ''] : n.given ?? [])).filter((s) => s.trim() !== '');
}

const sameText = (a: string[], b: string[]): boolean => a.some((x) => b.some((y) => foldText(x.trim()) === foldText(y.trim())));

function contactsOf(patient: Patient): string[] {
  const telecom = (patient.telecom ?? []).map((t: ContactPoint) => (t.system === 'email' ? (t.value ?? '').trim().toLowerCase() : (t.value ?? '').replace(/[^\d+]/g, '')));
  const postal = (patient.address ?? []).map((a) => (a.postalCode ?? '').replace(/\s/g, '').toUpperCase());
  return [...telecom, ...postal].filter((v) => v.length >= 3);
}

/** The score and grade of a candidate for the input (see the module comment); no grade below 0.3. */
export function scoreOf(input: Patient, candidate: Patient): { score: number; grade: MatchGrade | undefined } {
  const identifier = (input.identifier ?? []).some((a) => !!a.value && (candidate.identifier ?? []).some((b) =>
    b.value === a.value && (!a.system || !b.system || a.system === b.system)));
  const birth = !!input.birthDate && input.birthDate === candidate.birthDate;
  const conflict = !!input.birthDate && !!candidate.birthDate && input.birthDate !== candidate.birthDate;
  const family = sameText(namesOf(input, 'family'), namesOf(candidate, 'family'));
  const given = sameText(namesOf(input, 'given'), namesOf(candidate, 'given'));
  const gender = !!input.gender && input.gender === candidate.gender;
  const theirs = new Set(contactsOf(candidate));
  const contact = contactsOf(input).some((c) => theirs.has(c));
  const score = Math.round(100 * ((identifier ? 0.4 : 0) + (birth ? 0.2 : 0) + (family ? 0.15 : 0) + (given ? 0.15 : 0) + (gender ? 0.05 : 0) + (contact ? 0.05 : 0))) / 100;
  const grade: MatchGrade | undefined = identifier && (birth || family) && !conflict ? 'certain'
    : score >= 0.5 && !conflict ? 'probable'
      : score >= 0.3 ? 'possible' : undefined;
  return { score, grade };
}

function outcomeEntry(issue: OperationOutcomeIssue): BundleEntry {
  return { resource: operationOutcome([issue]), search: { mode: 'outcome' } };
}
