/**
 * EHR launch contexts (SMART App Launch 2.2 §2.0.1 "EHR Launch"). The EHR (a client holding
 * `system/launch`, or the operator CLI) creates a context; the app receives an opaque, single-use,
 * short-lived `launch` value and presents it at /authorize, where the launch's practitioner is the
 * authenticated user.
 *
 * A launch is made for one app: in SMART's EHR launch the EHR opens that app's launch URL with
 * `iss` and `launch`, and the app hands the value back at /authorize (app-launch.html, "Launch App:
 * EHR Launch"); the value is "an opaque identifier for this specific launch". Here it is more than
 * an identifier — the EHR vouches for its practitioner and the app gets its code without a sign-in
 * page — so a launch bound to no app would be a bearer credential any registered app could redeem
 * for the practitioner's access. `client_id` is therefore required, and the app must be registered.
 * The patient and practitioner must be resources the server holds (`resourceExists`): a context naming
 * made-up ids would hand the app a token for a patient that is not there, or a user no record is.
 */
import { randomBytes } from 'node:crypto';
import type { KeyValueStore } from '../kv/port.js';
import { badRequest } from '../errors.js';
import type { SmartStore } from './store.js';

export interface LaunchContext {
  patient: string;
  encounter?: string;
  /** Bare Practitioner id of the clinician whose EHR session vouches for the launch. */
  practitioner: string;
  /** Only this client may use the launch (always set on new launches; optional in ones stored before it was required). */
  clientId?: string;
  fhirContext?: Array<{ reference: string }>;
  /** Whether the app should show its own patient banner (token response `need_patient_banner`): an EHR shows its own, so false unless it says otherwise. */
  needPatientBanner?: boolean;
  /** What the EHR launches the app for (token response `intent`, e.g. `reconcile-medications`), when it says. */
  intent?: string;
}

export interface CreatedLaunch {
  launch: string;
  expiresIn: number;
  /** The app URL `launch_uri?iss=…&launch=…` when the client has a registered launch URI. */
  launchUrl?: string;
}

export const LAUNCH_TTL_SECONDS = 300;
const ID = /^[A-Za-z0-9\-.]{1,64}$/;
const REFERENCE = /^[A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64}$/;

/**
 * The FHIR base the running server serves, kept in the KV store it shares with operator commands:
 * a launch's `iss` must be the server's own base (its `aud` check), which a command run with other
 * settings (another PORT or GLUCOGUARD_BASE_URL, or none) would otherwise get wrong.
 */
const SERVED_FHIR_BASE = 'smart:served-fhir-base';

/** Records the FHIR base this server serves (`glucoguard serve`, once listening). */
export function recordServedFhirBase(kv: KeyValueStore, fhirBase: string): Promise<void> {
  return kv.set(SERVED_FHIR_BASE, fhirBase);
}

/** The FHIR base the last server started on this KV store serves; undefined when none recorded one. */
export function servedFhirBase(kv: KeyValueStore): Promise<string | undefined> {
  return kv.get(SERVED_FHIR_BASE);
}

/** Whether the server holds a resource (the Repository through src/repository/exists.ts). */
export type ResourceExists = (type: string, id: string) => Promise<boolean>;

/**
 * Validates and stores a launch context; returns the opaque launch value (and app URL). Without
 * `resourceExists` the patient and practitioner ids are only checked for their form (in-process
 * callers that made them; the CLI always passes it, POST /smart/launch once createSmart has it).
 */
export async function createLaunch(deps: { kv: KeyValueStore; store: SmartStore; fhirBase: string; resourceExists?: ResourceExists }, input: LaunchInput): Promise<CreatedLaunch> {
  const context = validateLaunch(input);
  const client = deps.store.getClient(context.clientId!);
  if (!client) throw badRequest(`client_id ${context.clientId!.slice(0, 64)} is not a registered application`, 'client_id');
  const launchUri = client.launchUri;
  if (deps.resourceExists) {
    if (!(await deps.resourceExists('Patient', context.patient))) throw badRequest(`patient: Patient/${context.patient} does not exist`, 'patient');
    if (!(await deps.resourceExists('Practitioner', context.practitioner))) throw badRequest(`practitioner: Practitioner/${context.practitioner} does not exist`, 'practitioner');
  }
  const launch = randomBytes(24).toString('base64url');
  await deps.kv.set(`smart:launch:${launch}`, JSON.stringify(context), LAUNCH_TTL_SECONDS * 1000);
  let launchUrl: string | undefined;
  if (launchUri) {
    const url = new URL(launchUri);
    url.searchParams.set('iss', deps.fhirBase);
    url.searchParams.set('launch', launch);
    launchUrl = url.href;
  }
  return { launch, expiresIn: LAUNCH_TTL_SECONDS, ...(launchUrl ? { launchUrl } : {}) };
}

/**
 * Reads a launch value without consuming it; undefined when unknown, used or expired. A stored
 * launch never changes, so what this reads is what a later takeLaunch of it gets.
 */
export async function peekLaunch(kv: KeyValueStore, launch: string): Promise<LaunchContext | undefined> {
  const raw = await kv.get(`smart:launch:${launch}`);
  return raw ? (JSON.parse(raw) as LaunchContext) : undefined;
}

/** Consumes a launch value (atomically: of concurrent takes one gets it); undefined when unknown, used or expired. */
export async function takeLaunch(kv: KeyValueStore, launch: string): Promise<LaunchContext | undefined> {
  const raw = await kv.take(`smart:launch:${launch}`);
  return raw ? (JSON.parse(raw) as LaunchContext) : undefined;
}

/** A launch as an EHR or an operator asks for it, not yet checked. */
export interface LaunchInput {
  patient: unknown; encounter?: unknown; practitioner: unknown; clientId?: unknown; fhirContext?: unknown; needPatientBanner?: unknown; intent?: unknown;
}

/** SMART's `intent`: a short code-like text (reconcile-medications, view-only…). */
const INTENT = /^[\x21-\x7e][\x20-\x7e]{0,99}$/;

function validateLaunch(input: LaunchInput): LaunchContext {
  const id = (value: unknown, name: string, required: boolean): string | undefined => {
    if (value === undefined || value === null || value === '') {
      if (required) throw badRequest(`${name} is required`, name);
      return undefined;
    }
    if (typeof value !== 'string' || !ID.test(value)) throw badRequest(`${name} must be a FHIR id`, name);
    return value;
  };
  let fhirContext: Array<{ reference: string }> | undefined;
  if (input.fhirContext !== undefined) {
    if (!Array.isArray(input.fhirContext) || !input.fhirContext.every((c) => c && typeof c.reference === 'string' && REFERENCE.test(c.reference))) {
      throw badRequest('fhirContext must be a list of {"reference": "Type/id"}', 'fhirContext');
    }
    fhirContext = input.fhirContext.map((c: { reference: string }) => ({ reference: c.reference }));
  }
  if (input.clientId === undefined || input.clientId === null || input.clientId === '') {
    throw badRequest('client_id is required: a launch is made for one app, which alone may use it', 'client_id');
  }
  if (typeof input.clientId !== 'string') throw badRequest('client_id must be a string', 'client_id');
  const banner = input.needPatientBanner;
  if (banner !== undefined && typeof banner !== 'boolean' && banner !== 'true' && banner !== 'false') throw badRequest('need_patient_banner must be true or false', 'need_patient_banner');
  if (input.intent !== undefined && (typeof input.intent !== 'string' || !INTENT.test(input.intent))) {
    throw badRequest('intent must be a short text of printable ASCII characters (at most 100), e.g. reconcile-medications', 'intent');
  }
  return {
    patient: id(input.patient, 'patient', true)!,
    practitioner: id(input.practitioner, 'practitioner', true)!,
    ...(id(input.encounter, 'encounter', false) ? { encounter: input.encounter as string } : {}),
    clientId: input.clientId,
    ...(fhirContext ? { fhirContext } : {}),
    ...(banner !== undefined ? { needPatientBanner: banner === true || banner === 'true' } : {}),
    ...(input.intent !== undefined ? { intent: input.intent as string } : {}),
  };
}
