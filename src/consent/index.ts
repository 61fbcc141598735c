/**
 * Consent, wired: identity and consent registries on the chain, patients' keys, the decision point,
 * the policy/guard for the FHIR facade, the grant service and the access log. src/app.ts builds one
 * of these and plugs `policy` into the FhirRouter next to the SMART scopes.
 */
import path from 'node:path';
import { AuditRecorder } from '../audit/recorder.js';
import type { FhirRouter } from '../fhir/router.js';
import type { ProfileValidator } from '../fhir/validation.js';
import type { KeyValueStore } from '../kv/port.js';
import type { ChainClient } from '../ledger/client.js';
import { ConsentRegistryClient } from '../ledger/consent-registry.js';
import { IdentityRegistryClient } from '../ledger/identity-registry.js';
import type { Logger } from '../log.js';
import type { Resource } from '@medplum/fhirtypes';
import type { Repository } from '../repository/port.js';
import { ConsentDecisions } from './decisions.js';
import { GrantIndex } from './grant-index.js';
import { KeyGuardians } from './keys/guardians.js';
import { PatientKeys } from './patient-keys.js';
import { PatientPicker } from './patient-picker.js';
import { ConsentPolicy } from './policy.js';
import { actsForPatient } from './legal-authority.js';
import { ConsentService } from './service.js';

export interface Consent {
  registry: ConsentRegistryClient;
  identity: IdentityRegistryClient;
  keys: PatientKeys;
  /** Guardians for key recovery (IdentityRegistry setGuardians/recover). */
  guardians: KeyGuardians;
  /** Grant ids by grantee, followed from the chain and kept on disk. */
  grants: GrantIndex;
  decisions: ConsentDecisions;
  policy: ConsentPolicy;
  service: ConsentService;
  audit: AuditRecorder;
  /** The patients the SMART patient picker offers a signed-in user: those consent lets them see (audited). */
  picker: PatientPicker;
  /** Registers the Consent write handler and `$sign` on the router, and starts following invalidations. */
  attach(router: FhirRouter): Promise<void>;
  close(): Promise<void>;
}

export interface ConsentOptions {
  dataDir: string;
  rootKey: string;
  repository: Repository;
  validator: ProfileValidator;
  kv: KeyValueStore;
  chain: ChainClient;
  logger?: Logger;
  now?: () => number;
  /** The access log's write window (AuditRecorder). */
  auditWindowMs?: number;
  /**
   * Whether a stored resource may be trusted for an authority decision (a guardian's RelatedPerson):
   * it passed the integrity check (verified, or committed and waiting to be anchored). Without it,
   * any readable version is.
   */
  trusted?: (resource: Resource) => Promise<boolean>;
}

export function createConsent(options: ConsentOptions): Consent {
  const registry = new ConsentRegistryClient(options.chain);
  const grants = new GrantIndex({ dataDir: options.dataDir, chain: options.chain });
  const identity = new IdentityRegistryClient(options.chain, (ref) => grants.registeredUnder(ref));
  const keyDir = path.join(options.dataDir, 'keys', 'patients');
  const keys = new PatientKeys({ dir: keyDir, rootKey: options.rootKey, identity, kv: options.kv });
  const guardians = new KeyGuardians({ keys, identity, chain: options.chain, kv: options.kv, dir: keyDir, now: options.now });
  const decisions = new ConsentDecisions({ ...options, registry, identity, keys, grants });
  const actsFor = (fhirUser: string | undefined, patientId: string) => actsForPatient(options.repository, fhirUser, patientId, Date.now(), options.trusted);
  const policy = new ConsentPolicy(decisions, { actsFor });
  const service = new ConsentService({ ...options, registry, identity, keys, decisions, actsFor });
  const audit = new AuditRecorder({ repository: options.repository, logger: options.logger, now: options.now, windowMs: options.auditWindowMs });
  const picker = new PatientPicker({ repository: options.repository, policy, audit });
  return {
    registry, identity, keys, guardians, grants, decisions, policy, service, audit, picker,
    async attach(router) {
      router.registerWriteHandler('Consent', service.writeHandler(router));
      router.registerOperation(service.signOperation(router));
      await decisions.start();
    },
    async close() {
      await decisions.stop();
      await audit.close();
      grants.close();
    },
  };
}
