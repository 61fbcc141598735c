/**
 * The research seam: when does data leave de-identified, and under which study's pseudonyms.
 *
 * A requester acts for research when it states the purpose of use HRESCH or a code under it
 * (X-Purpose-Of-Use, kept with an export job; consent/requester.ts RESEARCH_PURPOSES, the same set
 * the REST API refuses); consent then only lets through what the patients granted for it. The
 * study is the requester's identity — its `fhirUser` (e.g. the study's Organization, the grantee of
 * the research Consent) or else `Client/<client_id>` — so each study sees its own stable
 * pseudonyms. Consent grants carry no study id of their own yet; when they do, look it up here.
 */
import { isResearchPurpose } from '../consent/requester.js';
import { forbidden } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import { Deidentifier, studyKey, type DeidentifyOptions } from './deidentify.js';

export const RESEARCH_PURPOSE = 'HRESCH';

export interface ResearchContext {
  studyId: string;
}

/**
 * The study a requester exports for, when its purpose is research; otherwise undefined. A research
 * requester without an identity to key pseudonyms by is refused (403), never served identified.
 */
export function researchContextOf(access: AccessContext & { purposeOfUse?: string }): ResearchContext | undefined {
  if (access.kind === 'open' || !isResearchPurpose(access.purposeOfUse)) return undefined;
  const studyId = access.fhirUser ?? (access.clientId ? `Client/${access.clientId}` : undefined);
  if (!studyId) throw forbidden('A research requester must be identified (fhirUser or client) for its data to be de-identified');
  return { studyId };
}

/** One Deidentifier per study (keys derived once). */
export class StudyDeidentifiers {
  private readonly byStudy = new Map<string, Deidentifier>();

  constructor(private readonly rootKey: string, private readonly options: DeidentifyOptions = {}) {}

  /** Whether research files carry shifted dates (a filter by a real date would undo the shift). */
  get dateShift(): boolean {
    return this.options.dateShift === true;
  }

  /** The de-identification step for this requester, or undefined when data leaves as it is. */
  forAccess(access: AccessContext & { purposeOfUse?: string }): Deidentifier | undefined {
    const research = researchContextOf(access);
    if (!research) return undefined;
    let d = this.byStudy.get(research.studyId);
    if (!d) {
      d = new Deidentifier(studyKey(this.rootKey, research.studyId), this.options);
      this.byStudy.set(research.studyId, d);
    }
    return d;
  }
}
