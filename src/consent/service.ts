/**
 * The grant path: a Consent (GlucoGuard profile) → the EIP-712 Grant it stands for → signed by the
 * patient's key → relayed to ConsentRegistry → the Consent becomes `active` only once the chain
 * has the grant. Revocation (`status: inactive` via PUT, or DELETE) takes the same path and leaves
 * the Consent `inactive`. Consent.identifier carries the grant id; the chain's grant id is the
 * digest of the signed message, so Consent ↔ grant are linked both ways.
 *
 * Custodial patients (a key GlucoGuard keeps, src/consent/patient-keys.ts) are signed for at once,
 * with the key opened by the patient's session (their sign-in); without it the answer is 403.
 * For a non-custodial patient the answer is 202 with the typed data; the wallet's signature comes
 * back through `POST /fhir/Consent/ID/$sign` (Parameters `signature`).
 */
import { Operator } from '@medplum/core';
import type { Consent, Parameters } from '@medplum/fhirtypes';
import { getAddress, Signature, type Wallet } from 'ethers';
import { badRequest, forbidden, issue, notFound, unprocessable } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import type { FhirRouter, OperationHandler, TypeWriteHandler } from '../fhir/router.js';
import type { FhirRequest, FhirResponse } from '../fhir/types.js';
import type { ProfileValidator } from '../fhir/validation.js';
import type { KeyValueStore } from '../kv/port.js';
import type { Logger } from '../log.js';
import { ConsentRegistryClient, type TypedData } from '../ledger/consent-registry.js';
import type { IdentityRegistryClient } from '../ledger/identity-registry.js';
import { resourceExists } from '../repository/exists.js';
import type { Repository } from '../repository/port.js';
import type { ConsentDecisions } from './decisions.js';
import type { PatientKeys } from './patient-keys.js';
import { requesterOf } from './requester.js';
import {
  consentTerms, GRANT_ID_SYSTEM, grantIdOf, purposeBytes, REVOKE_TX_SYSTEM, scopeHash, unzonedBounds, withDefaults, type ConsentTerms,
} from './terms.js';

const PENDING_TTL_MS = 60 * 60 * 1000;

export interface ConsentServiceOptions {
  repository: Repository;
  validator: ProfileValidator;
  registry: ConsentRegistryClient;
  identity: IdentityRegistryClient;
  keys: PatientKeys;
  decisions: ConsentDecisions;
  kv: KeyValueStore;
  logger?: Logger;
  now?: () => number;
  /** Whether a signed-in user acts for a patient by a legal authority (legal-authority.ts actsForPatient, with the integrity check). */
  actsFor: (fhirUser: string | undefined, patientId: string) => Promise<boolean>;
}

/** Result of a grant or revocation: done (custodial) or waiting for the wallet's signature. */
export type ConsentOutcome =
  | { state: 'done'; consent: Consent }
  | { state: 'awaiting-signature'; consent: Consent; typedData: TypedData };

interface Pending {
  kind: 'grant' | 'revoke';
  consentId: string;
  typedData: TypedData;
  signer: string;
}

export class ConsentService {
  private readonly now: () => number;

  constructor(private readonly options: ConsentServiceOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Validates a Consent and records its grant; 422 for unsupported provisions or unknown grantees. */
  async grant(input: Consent, access: AccessContext): Promise<ConsentOutcome> {
    // A Consent sent as draft, rejected, inactive or entered-in-error says "do not act on this":
    // granting it anyway would give access the patient has not (or no longer) agreed to.
    if (input.status !== 'active' && input.status !== 'proposed') {
      throw unprocessable([issue('ERR_UNPROCESSABLE', `A Consent is granted only with status active (or proposed), not "${String(input.status ?? '').slice(0, 40)}"`, 'Consent.status')]);
    }
    const consent = withDefaults({ ...input, status: 'proposed' });
    delete consent.id;
    this.options.validator.assertValid(consent);
    const unzoned = unzonedBounds(consent);
    if (unzoned.length) throw unprocessable(unzoned);
    const terms = consentTerms(consent);
    await this.assertMayConsent(access, terms);
    // before any key is made or anything signed: a grant for an id no Patient holds would pass to
    // whoever is later created with that id, though they never gave it
    if (!(await resourceExists(this.options.repository, 'Patient', terms.patientId))) {
      throw unprocessable([issue('ERR_UNPROCESSABLE', `Patient/${terms.patientId} not found`, 'Consent.patient')]);
    }
    if (terms.notAfter <= this.now()) throw unprocessable([issue('ERR_UNPROCESSABLE', 'provision.period has already ended', 'Consent.provision.period')]);
    const grantees = await this.options.identity.granteesOf(terms.actor);
    if (grantees.length === 0) {
      throw unprocessable([issue('ERR_UNPROCESSABLE', `${terms.actor} has no registered identity; register it first (glucoguard identity register)`, 'Consent.provision.actor')]);
    }
    const key = this.options.keys.get(terms.patientId) ?? await this.options.keys.ensure(terms.patientId, access);
    // A key under the patient's login needs this session's unlock: refused here, before anything is stored.
    const wallet = await this.options.keys.signer(terms.patientId, access);
    const typedData = await this.options.registry.grantTypedData({
      patient: key.address,
      grantee: grantees[0]!,
      scopeHash: scopeHash(terms),
      dataFrom: Math.floor(terms.dataFrom / 1000),
      dataTo: Math.floor(terms.dataTo / 1000),
      notBefore: Math.floor(terms.notBefore / 1000),
      notAfter: Math.floor(terms.notAfter / 1000),
      purpose: purposeBytes(terms.purposes),
    }, Math.floor(this.now() / 1000) + 3600);
    const grantId = ConsentRegistryClient.grantIdOf(typedData);
    consent.identifier = [...(consent.identifier ?? []).filter((i) => i.system !== GRANT_ID_SYSTEM), { system: GRANT_ID_SYSTEM, value: grantId }];
    const { resource: stored } = await this.options.repository.create(consent);
    return this.signOrWait({ kind: 'grant', consentId: stored.id!, typedData, signer: key.address }, stored, wallet);
  }

  /** Revokes the grant of an active Consent. */
  async revoke(consentId: string, access: AccessContext): Promise<ConsentOutcome> {
    const consent = await this.read(consentId);
    const terms = consentTerms(consent);
    await this.assertMayConsent(access, terms);
    const grantId = grantIdOf(consent);
    if (consent.status !== 'active' || !grantId) throw unprocessable([issue('ERR_UNPROCESSABLE', 'Only an active Consent can be revoked', 'Consent.status')]);
    const signer = await this.options.identity.patientKey(this.options.keys.pseudonym(terms.patientId));
    if (!signer) throw unprocessable([issue('ERR_UNPROCESSABLE', 'The patient has no key on chain')]);
    const wallet = await this.options.keys.signer(terms.patientId, access);
    const typedData = await this.options.registry.revokeTypedData(grantId, signer, Math.floor(this.now() / 1000) + 3600);
    return this.signOrWait({ kind: 'revoke', consentId, typedData, signer }, consent, wallet);
  }

  /** Relays a wallet's signature for a pending grant or revocation of this Consent. */
  async submitSignature(consentId: string, signature: string, access: AccessContext): Promise<Consent> {
    const consent = await this.read(consentId);
    await this.assertMayConsent(access, consentTerms(consent));
    const raw = await this.options.kv.get(`consent:pending:${consentId}`);
    if (!raw) throw unprocessable([issue('ERR_UNPROCESSABLE', 'Nothing is waiting for a signature on this Consent (or it expired)')]);
    const pending = JSON.parse(raw) as Pending;
    let sig: string;
    try {
      sig = Signature.from(signature).serialized;
    } catch {
      throw badRequest('signature must be a 65-byte hex ECDSA signature', 'signature');
    }
    const done = await this.relay(pending, sig, consent);
    await this.options.kv.delete(`consent:pending:${consentId}`);
    return done;
  }

  /** The patient's Consents, newest first. */
  async list(patientId: string): Promise<Consent[]> {
    const result = await this.options.repository.search({
      resourceType: 'Consent', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${patientId}` }], count: 1000, offset: 0,
    });
    return result.resources as Consent[];
  }

  /**
   * The FHIR surface: Consent writes (PATCH and conditional writes are not offered: the router
   * answers 405 whatever the id). `router` decides what the requester may see (its guards).
   */
  writeHandler(router: FhirRouter): TypeWriteHandler {
    return {
      defaults: (resource) => withDefaults(resource as Consent),
      create: async (req) => this.respond(await this.grant(consentBody(req), req.access), 201),
      update: async (req, id) => {
        const body = consentBody(req);
        if (body.id !== id) throw badRequest(`Resource id "${body.id ?? ''}" does not match the URL id "${id}"`, 'id');
        const current = await this.findable(id, req.access, router);
        if (body.status !== 'inactive' || current.status !== 'active') {
          throw unprocessable([issue('ERR_UNPROCESSABLE', 'A recorded Consent can only be revoked (status inactive); grant a new one to change terms', 'Consent.status')]);
        }
        return this.respond(await this.revoke(id, req.access), 200);
      },
      delete: async (req, id) => {
        await this.findable(id, req.access, router);
        const outcome = await this.revoke(id, req.access);
        return outcome.state === 'done' ? { status: 204 } : this.respond(outcome, 200);
      },
    };
  }

  signOperation(router: FhirRouter): OperationHandler {
    return {
      name: 'sign',
      levels: ['instance'],
      resourceTypes: ['Consent'],
      methods: ['POST'],
      handle: async (req, target) => {
        await this.findable(target.id!, req.access, router);
        const params = req.body as Parameters | undefined;
        const signature = params?.resourceType === 'Parameters' ? params.parameter?.find((p) => p.name === 'signature')?.valueString : undefined;
        if (!signature) throw badRequest('Expected Parameters with a "signature" valueString');
        return { status: 200, body: await this.submitSignature(target.id!, signature, req.access) };
      },
    };
  }

  private async signOrWait(pending: Pending, consent: Consent, wallet: Wallet | undefined): Promise<ConsentOutcome> {
    if (wallet && getAddress(wallet.address) === getAddress(pending.signer)) {
      const t = pending.typedData;
      const signature = await wallet.signTypedData(t.domain, t.types, t.message);
      return { state: 'done', consent: await this.relay(pending, signature, consent) };
    }
    await this.options.kv.set(`consent:pending:${pending.consentId}`, JSON.stringify(pending), PENDING_TTL_MS);
    return { state: 'awaiting-signature', consent, typedData: pending.typedData };
  }

  private async relay(pending: Pending, signature: string, consent: Consent): Promise<Consent> {
    let updated: Consent;
    if (pending.kind === 'grant') {
      await this.options.registry.relayGrant(pending.typedData, signature);
      updated = { ...consent, status: 'active' };
    } else {
      // denied everywhere now; the chain confirms within a block period or two
      const grantId = String(pending.typedData.message.grantId);
      await this.options.decisions.withdraw(grantId);
      const { txHash } = await this.options.registry.relayRevoke(pending.typedData, signature);
      updated = { ...consent, status: 'inactive', identifier: [...(consent.identifier ?? []), { system: REVOKE_TX_SYSTEM, value: txHash }] };
    }
    const { resource } = await this.options.repository.update(updated);
    // Every replica drops cached decisions now (epoch + pub/sub); chain events follow.
    await this.options.decisions.changed();
    return resource;
  }

  private respond(outcome: ConsentOutcome, status: number): FhirResponse {
    const location = { Location: `Consent/${outcome.consent.id}/_history/${outcome.consent.meta?.versionId}` };
    if (outcome.state === 'done') return { status, body: outcome.consent, headers: location };
    const body: Parameters = {
      resourceType: 'Parameters',
      parameter: [
        { name: 'consent', resource: outcome.consent },
        { name: 'typedData', valueString: JSON.stringify(outcome.typedData) },
        { name: 'sign', valueString: `Consent/${outcome.consent.id}/$sign` },
      ],
    };
    return { status: 202, body, headers: location };
  }

  private async read(id: string): Promise<Consent> {
    try {
      return await this.options.repository.read<Consent>('Consent', id);
    } catch {
      throw notFound(`Consent/${id} not found`);
    }
  }

  /**
   * A stored Consent the requester may act on: one they may grant or revoke for (the patient, their
   * guardian), or one they could read through the facade (the router's guards: scopes, consent,
   * integrity). Any other answers exactly as an id never stored does (404, before any other check
   * on it), so a revocation, a PUT or `$sign` cannot tell which Consent ids exist
   * (docs/architecture.md: a resource a requester cannot see is absent to them).
   */
  private async findable(id: string, access: AccessContext, router: Pick<FhirRouter, 'guard'>): Promise<Consent> {
    const consent = await this.read(id);
    if (access.kind === 'open') return consent;
    let terms: ConsentTerms | undefined;
    try {
      terms = consentTerms(consent);
    } catch {
      // terms no grant can be read from: no one consents for it; it is findable only if visible
    }
    if (terms && (await this.mayConsent(access, terms))) return consent;
    if ((await router.guard(access, [consent])).allowed.length > 0) return consent;
    throw notFound(`Consent/${id} not found`); // word for word what an id never stored answers
  }

  /**
   * Only the patient themself or their guardian may consent: a RelatedPerson of the patient, active,
   * whose relationship is a legal authority to act for them (legal-authority.ts: guardian, power of
   * attorney). Any other relative (a partner, a parent of an adult, a carer) is a grantee like any
   * other: it may be granted access, never grant it (black-box round: any relative could grant
   * themselves or anyone access).
   */
  private async assertMayConsent(access: AccessContext, terms: ConsentTerms): Promise<void> {
    if (!(await this.mayConsent(access, terms))) throw forbidden('Only the patient or their guardian may grant or revoke this consent');
  }

  private async mayConsent(access: AccessContext, terms: ConsentTerms): Promise<boolean> {
    const requester = requesterOf(access);
    if (requester.kind === 'open') return true;
    if (requester.kind === 'patient' && requester.patientId === terms.patientId && terms.performer === `Patient/${terms.patientId}`) return true;
    return access.fhirUser === terms.performer && this.options.actsFor(access.fhirUser, terms.patientId);
  }
}

function consentBody(req: FhirRequest): Consent {
  const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (contentType !== 'application/fhir+json' && contentType !== 'application/json') throw badRequest('Content-Type must be application/fhir+json');
  const body = req.body as Consent | undefined;
  if (typeof body !== 'object' || body === null || body.resourceType !== 'Consent') throw badRequest("The body's resourceType must be Consent", 'resourceType');
  return structuredClone(body);
}
