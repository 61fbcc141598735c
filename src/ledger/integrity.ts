/**
 * Integrity on every read. For each resource leaving /fhir the guard recomputes its commitment
 * (SHA-256 of the stored salt ‖ the canonical text — ready bytes from the embedded adapter, a
 * canonicalisation for upstream resources) and compares it with the recorded leaf; for anchored
 * versions it checks the Merkle proof against the root the contract holds for that batch.
 *
 * - match, anchored: served as is (the leaf is then cached, so the next read is one SHA-256);
 * - match, not anchored yet: served with meta.tag urn:glucoguard:integrity#pending;
 * - no commitment (data that predates the ledger, e.g. on an upstream server): served with
 *   #unverified, or withheld when the mode is `strict` (GLUCOGUARD_INTEGRITY=strict);
 * - mismatch (content, proof or root): withheld, an OperationOutcome issue says the integrity
 *   check failed, and an AuditEvent is written.
 *
 * Roots are read from the chain once per batch and cached: PoA blocks here (Clique with one
 * signer, Besu QBFT) are final when sealed. A root that cannot be read (node down) makes the
 * version "unverified" for that read, not a failure.
 */
import type { AuditEvent, Coding, OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import type { Contract } from 'ethers';
import type { Logger } from 'pino';
import type { AccessContext } from '../fhir/access.js';
import type { GuardResult, OutboundGuard } from '../fhir/policy.js';
import { patientIdsOf } from '../fhir/compartment.js';
import { canonicalTextOf } from '../repository/port.js';
import { canonicalResourceText, commitmentOf } from './canonical.js';
import { buildMerkleTree, verifyMerkleProof } from './merkle.js';
import type { CommitmentRecord, CommitmentStore } from './store.js';

export const INTEGRITY_TAG_SYSTEM = 'urn:glucoguard:integrity';
export type IntegrityMode = 'lenient' | 'strict';

/** Outcome of checking one resource version. */
export type CheckResult =
  | { status: 'verified' }
  | { status: 'pending' }
  | { status: 'unverified'; reason: 'no-commitment' | 'root-unavailable' }
  | { status: 'failed'; reason: 'content' | 'proof' | 'root' };

const VERIFIED_CACHE_MAX = 200_000;
/** Verified canonical texts kept for the equality fast path, in UTF-16 code units (~64 MB at most). */
const VERIFIED_TEXT_BUDGET = 32 * 1024 * 1024;
const VERIFIED: CheckResult = Object.freeze({ status: 'verified' });

interface Verified {
  salt: Buffer;
  leaf: Buffer;
  /** The exact canonical text that was hashed and proven, when the adapter supplied it. */
  text?: string;
}

/** Checks resource versions against their commitments and the anchored roots. */
export class IntegrityChecker {
  /** type/id/version → leaf proven against an on-chain root (insertion order = eviction order). */
  private readonly verified = new Map<string, Verified>();
  private verifiedTextSize = 0;
  /** local batch id → on-chain root (checked equal to the local one) or false (chain disagrees). */
  private readonly roots = new Map<number, Buffer | false>();
  /** Batches whose whole tree was rebuilt from stored leaves and matched the chain (or failed to). */
  private readonly provenBatches = new Set<number>();

  constructor(private readonly store: CommitmentStore, private readonly anchor: Contract) {}

  /**
   * Checks one version. Synchronous (no promise) when the answer needs no chain read: a version
   * whose canonical text is identical to the text already hashed and proven costs one string
   * comparison; any other proven version costs one SHA-256.
   */
  check(resource: Resource): CheckResult | Promise<CheckResult> {
    const version = resource.meta?.versionId;
    if (!resource.id || !version) return { status: 'unverified', reason: 'no-commitment' };
    const key = `${resource.resourceType}/${resource.id}/${version}`;
    const cached = this.verified.get(key);
    const ready = canonicalTextOf(resource);
    if (cached?.text !== undefined && ready === cached.text) return VERIFIED;
    const record = cached ? undefined : this.store.get(resource.resourceType, resource.id, version);
    const salt = cached?.salt ?? record?.salt;
    const leaf = cached?.leaf ?? record?.leaf;
    if (!salt || !leaf) return { status: 'unverified', reason: 'no-commitment' };
    const text = ready ?? canonicalResourceText(resource);
    if (!commitmentOf(salt, text).equals(leaf)) return { status: 'failed', reason: 'content' };
    if (cached) {
      if (ready !== undefined) {
        // proven with its batch, hashed now: keep the text so the next read is a comparison
        this.verified.delete(key);
        this.remember(key, { salt, leaf, text: ready });
      }
      return VERIFIED;
    }
    return this.checkAnchor(key, record!, ready);
  }

  /** Checks a recorded commitment's proof against its batch's on-chain root (content already matched). */
  async checkAnchor(key: string, record: CommitmentRecord, text?: string): Promise<CheckResult> {
    if (record.batch === null || !record.proof) return { status: 'pending' };
    const root = this.roots.get(record.batch) ?? await this.rootOf(record.batch);
    if (root === undefined) return { status: 'pending' };
    if (root === null) return { status: 'unverified', reason: 'root-unavailable' };
    if (root === false) return { status: 'failed', reason: 'root' };
    if (!this.provenBatches.has(record.batch)) {
      this.provenBatches.add(record.batch);
      if (this.proveBatch(record.batch, root)) {
        this.remember(key, { salt: record.salt, leaf: record.leaf, text });
        return VERIFIED;
      }
    }
    if (!verifyMerkleProof(record.leaf, record.proof, root)) return { status: 'failed', reason: 'proof' };
    this.remember(key, { salt: record.salt, leaf: record.leaf, text });
    return VERIFIED;
  }

  /**
   * Rebuilds a batch's tree from the stored leaves: when it gives the on-chain root, every member's
   * leaf is proven at once (one query and ~1,000 hashes instead of a lookup and a 10-hash proof per
   * entry — what the first read of a day of readings costs). false when the leaves do not add up
   * (a changed commitment store); members are then proven one by one with their stored proofs.
   */
  private proveBatch(batchId: number, root: Buffer): boolean {
    const members = this.store.batchMembers(batchId);
    if (!members.length || !buildMerkleTree(members.map((m) => m.leaf)).root.equals(root)) return false;
    for (const m of members) {
      const key = `${m.type}/${m.id}/${m.version}`;
      if (!this.verified.has(key)) this.remember(key, { salt: m.salt, leaf: m.leaf });
    }
    return true;
  }

  private remember(key: string, entry: Verified): void {
    const size = entry.text?.length ?? 0;
    while (this.verified.size > 0 && (this.verified.size >= VERIFIED_CACHE_MAX || this.verifiedTextSize + size > VERIFIED_TEXT_BUDGET)) {
      const [oldest, value] = this.verified.entries().next().value as [string, Verified];
      this.verified.delete(oldest);
      this.verifiedTextSize -= value.text?.length ?? 0;
    }
    this.verified.set(key, entry);
    this.verifiedTextSize += size;
  }

  /** Forgets verified versions (benchmarks measure the cold path with it). */
  clearCache(): void {
    this.verified.clear();
    this.provenBatches.clear();
    this.verifiedTextSize = 0;
  }

  /** undefined: batch not anchored yet; null: chain unreachable; false: chain holds another root. */
  private async rootOf(batchId: number): Promise<Buffer | false | null | undefined> {
    const known = this.roots.get(batchId);
    if (known !== undefined) return known;
    const batch = this.store.batch(batchId);
    if (!batch || batch.status !== 'anchored' || batch.chainBatchId === null) return undefined;
    let onChain: Buffer;
    try {
      const b = await this.anchor.getBatch(batch.chainBatchId);
      onChain = Buffer.from(String(b.merkleRoot).slice(2), 'hex');
    } catch (err) {
      const revert = (err as { revert?: { name?: string } }).revert;
      if (revert?.name === 'ResourceAnchorUnknownBatch') {
        this.roots.set(batchId, false);
        return false;
      }
      return null;
    }
    const value = onChain.equals(batch.root) ? onChain : false;
    this.roots.set(batchId, value);
    return value;
  }
}

export interface IntegrityGuardOptions {
  checker: IntegrityChecker;
  mode?: IntegrityMode;
  /** Writes the AuditEvent of a failed check (through the repository). */
  audit: (event: AuditEvent) => Promise<unknown>;
  logger?: Logger;
}

/** The OutboundGuard the FHIR router runs on everything it returns (see src/fhir/router.ts `guard`). */
export class IntegrityGuard implements OutboundGuard {
  mode: IntegrityMode;

  constructor(private readonly options: IntegrityGuardOptions) {
    this.mode = options.mode ?? 'lenient';
  }

  async guard(access: AccessContext, resources: Resource[]): Promise<GuardResult> {
    const allowed: Resource[] = [];
    const issues: OperationOutcomeIssue[] = [];
    for (const resource of resources) {
      const checked = this.options.checker.check(resource);
      const result = checked instanceof Promise ? await checked : checked;
      switch (result.status) {
        case 'verified':
          allowed.push(resource);
          break;
        case 'pending':
          allowed.push(withTag(resource, { system: INTEGRITY_TAG_SYSTEM, code: 'pending', display: 'not yet anchored on the ledger' }));
          break;
        case 'unverified':
          if (this.mode === 'strict') {
            issues.push(issue('warning', resource, 'could not be verified (no anchored commitment); withheld in strict mode'));
          } else {
            allowed.push(withTag(resource, { system: INTEGRITY_TAG_SYSTEM, code: 'unverified', display: 'no anchored commitment to check against' }));
          }
          break;
        case 'failed':
          issues.push(issue('error', resource, 'failed the integrity check (content does not match its anchored commitment); withheld'));
          await this.recordFailure(access, resource, result.reason);
          break;
      }
    }
    return { allowed, issues };
  }

  private async recordFailure(access: AccessContext, resource: Resource, reason: string): Promise<void> {
    const ref = `${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
    this.options.logger?.error({ resource: ref, reason }, 'integrity check failed; resource withheld');
    try {
      await this.options.audit(integrityAuditEvent(access, resource, reason));
    } catch (err) {
      this.options.logger?.error({ err: (err as Error).message }, 'could not write the integrity AuditEvent');
    }
  }
}

function withTag<T extends Resource>(resource: T, tag: Coding): T {
  return { ...resource, meta: { ...resource.meta, tag: [...(resource.meta?.tag ?? []), tag] } };
}

function issue(severity: 'error' | 'warning', resource: Resource, text: string): OperationOutcomeIssue {
  return {
    severity,
    code: severity === 'error' ? 'processing' : 'security',
    details: { coding: [{ system: INTEGRITY_TAG_SYSTEM, code: severity === 'error' ? 'integrity-failed' : 'unverified' }] },
    diagnostics: `Integrity check: ${resource.resourceType}/${resource.id} version ${resource.meta?.versionId ?? '?'} ${text}`,
  };
}

/** A Security Alert AuditEvent (DICOM 110113) naming the version that failed; no resource content. */
export function integrityAuditEvent(access: AccessContext, resource: Resource, reason: string): AuditEvent {
  const patient = patientIdsOf(resource)[0];
  const who = access.fhirUser ? { reference: access.fhirUser } : { display: access.subject ?? access.clientId ?? (access.kind === 'open' ? 'unauthenticated (auth off)' : 'unknown') };
  return {
    resourceType: 'AuditEvent',
    type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110113', display: 'Security Alert' },
    subtype: [{ system: INTEGRITY_TAG_SYSTEM, code: 'integrity-failed', display: 'Integrity check failed' }],
    action: 'R',
    recorded: new Date().toISOString(),
    outcome: '8',
    outcomeDesc: `integrity check failed (${reason}): stored content does not match its anchored commitment; withheld`,
    agent: [{ who, requestor: true, ...(access.clientId ? { altId: access.clientId } : {}) }],
    source: {
      observer: { display: 'GlucoGuard' },
      type: [{ system: 'http://terminology.hl7.org/CodeSystem/security-source-type', code: '4', display: 'Application Server' }],
    },
    entity: [
      {
        what: { reference: `${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}` },
        type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '2', display: 'System Object' },
      },
      ...(patient ? [{
        what: { reference: `Patient/${patient}` },
        type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '1', display: 'Person' },
      }] : []),
    ],
  };
}
