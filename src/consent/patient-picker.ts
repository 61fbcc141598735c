/**
 * The patients the SMART patient picker offers a signed-in user (PatientDirectory,
 * src/smart/context.ts): those consent lets them see, by the rule the FHIR facade confines type and
 * system history with (ConsentPolicy.visibleGrants) — a patient their own record, anyone else the
 * patients whose grant to them, or to the app, is in force now. Never the whole Patient directory.
 *
 * Patients whose grants to the user are for research alone are not offered (research reaches data
 * only de-identified). The picker shows names and birth dates only where the user may read the
 * Patient record itself (a grant names the Patient type or covers every type: ConsentPolicy.pickable);
 * other offered patients are listed by id, and a name search does not reach them. Each list shown is recorded in the access log like a
 * search of Patient by that user and app: one AuditEvent per patient listed, in that patient's log,
 * naming the grants that let the user see them (one naming no patient when nothing matched). A
 * choice of a patient the user may not see is refused and recorded as a refused read of that
 * Patient, as a read at the facade would be.
 */
import { Operator, type Filter } from '@medplum/core';
import type { Patient } from '@medplum/fhirtypes';
import type { AuditRecorder } from '../audit/recorder.js';
import type { AccessContext } from '../fhir/access.js';
import type { Repository } from '../repository/port.js';
import type { PatientChoice, PatientDirectory } from '../smart/context.js';
import type { ConsentPolicy } from './policy.js';

/** Most patients one picker page lists. */
const PAGE = 20;

export class PatientPicker implements PatientDirectory {
  constructor(private readonly deps: { repository: Repository; policy: ConsentPolicy; audit: AuditRecorder }) {}

  async search(user: AccessContext, query: string): Promise<PatientChoice[]> {
    const visible = await this.visible(user);
    // a name is searched only among the patients whose names the user may be shown (else the search
    // would tell which visible id has that name); an exact id finds any visible patient
    const searched = visible && query && !visible.has(query) ? new Map([...visible].filter(([, v]) => v.shown)) : visible;
    const found = searched?.size === 0 ? [] : await this.find(searched, query);
    const queryText = !query ? 'Patient' : visible?.has(query) ? `Patient?_id=${query}` : `Patient?name=${query}`;
    if (found.length === 0) {
      this.deps.audit.recordAccess(user, { interaction: 'search-type', outcome: '0', query: queryText, patients: [], grants: [] });
    }
    for (const p of found) {
      this.deps.audit.recordAccess(user, {
        interaction: 'search-type', outcome: '0', query: queryText, patients: [p.id!], grants: visible?.get(p.id!)?.grants ?? [],
      });
    }
    return found.map((p) => (!visible || visible.get(p.id!)?.shown ? choiceOf(p) : notShown(p.id!)));
  }

  async mayChoose(user: AccessContext, patientId: string): Promise<boolean> {
    const visible = await this.visible(user);
    if (!visible || visible.has(patientId)) return true;
    this.deps.audit.recordAccess(user, {
      interaction: 'read', outcome: '4', outcomeDesc: 'patient picker: not a patient this user may see',
      target: `Patient/${patientId}`, patients: [patientId], grants: [],
    });
    return false;
  }

  /**
   * The patient the approval page names: their name and birth date where the user may be shown
   * them, as the list would show them, recorded in that patient's access log as a read of their
   * Patient by the user and app; otherwise by id alone, with nothing read.
   */
  async describe(user: AccessContext, patientId: string): Promise<PatientChoice | undefined> {
    const visible = await this.visible(user);
    const entry = visible?.get(patientId);
    if (visible && !entry) return undefined;
    if (entry && !entry.shown) return notShown(patientId);
    const { resources } = await this.deps.repository.search({ resourceType: 'Patient', filters: [{ code: '_id', operator: Operator.EQUALS, value: patientId }], count: 1, offset: 0 });
    const patient = resources[0] as Patient | undefined;
    if (!patient) return undefined;
    this.deps.audit.recordAccess(user, {
      interaction: 'read', outcome: '0', target: `Patient/${patientId}`, patients: [patientId], grants: entry?.grants ?? [],
    });
    return choiceOf(patient);
  }

  /** As the facade does: authorize first (brings the consent epoch up to date), then the patients the picker may offer. */
  private async visible(user: AccessContext): Promise<Map<string, { grants: string[]; shown: boolean }> | undefined> {
    await this.deps.policy.authorize(user, 'search', 'Patient');
    return this.deps.policy.pickable(user);
  }

  /** Up to a page of the visible patients (all patients when consent does not limit the user) matching `query`. */
  private async find(visible: Map<string, unknown> | undefined, query: string): Promise<Patient[]> {
    const eq = (code: string, value: string): Filter => ({ code, operator: Operator.EQUALS, value });
    // an exact id of a visible patient finds that patient; any other text searches their names
    const filters = visible?.has(query)
      ? [eq('_id', query)]
      : [...(visible ? [eq('_id', [...visible.keys()].join(','))] : []), ...(query ? [eq('name', query)] : [])];
    const result = await this.deps.repository.search({ resourceType: 'Patient', filters, count: PAGE, offset: 0 });
    return (result.resources as Patient[]).filter((p) => p.id && (!visible || visible.has(p.id)));
  }
}

/** A patient the user may choose but not be shown the name of (their grants do not cover the Patient record). */
function notShown(id: string): PatientChoice {
  return { id, withheld: true };
}

function choiceOf(p: Patient): PatientChoice {
  const name = p.name?.[0];
  const words = [name?.given?.join(' '), name?.family].filter(Boolean).join(' ');
  return { id: p.id!, ...(words ? { name: words } : {}), ...(p.birthDate ? { birthDate: p.birthDate } : {}) };
}
