/**
 * Research and automated exchange, wired: bulk `$export` (export.ts, files via http.ts),
 * R4 backport Subscriptions (subscriptions.ts) and de-identification for research requesters
 * (research.ts, deidentify.ts). src/app.ts builds one of these after the FHIR router and mounts
 * `filesRouter` at `/exports`.
 */
import path from 'node:path';
import type { Router } from 'express';
import type { AccessContext } from '../fhir/access.js';
import type { AccessPolicy } from '../fhir/policy.js';
import type { FhirRouter } from '../fhir/router.js';
import type { FhirRequest, FhirResponse } from '../fhir/types.js';
import type { Logger } from '../log.js';
import { ExportService, type ReleasePolicy } from './export.js';
import { exportFilesRouter } from './http.js';
import { GuardedReader } from './reader.js';
import { StudyDeidentifiers } from './research.js';
import { exchangeSettings, type ExchangeSettings } from './settings.js';
import { deriveKey } from '../keys.js';
import { SubscriptionService, type CommittedVersions } from './subscriptions.js';
import type { NotifyingRepository } from './write-events.js';

export { NotifyingRepository } from './write-events.js';
export { Deidentifier, studyKey } from './deidentify.js';
export { researchContextOf, RESEARCH_PURPOSE } from './research.js';

export interface Exchange {
  exports: ExportService;
  subscriptions: SubscriptionService;
  /** Express router for the NDJSON files (mount at `/exports`). */
  filesRouter: Router;
  settings: ExchangeSettings;
  close(): Promise<void>;
}

import type { StoredAccess } from './jobs.js';

export interface ExchangeOptions {
  dataDir: string;
  rootKey: string;
  fhir: FhirRouter;
  /** The requester's policy (SMART scopes and consent: ComposedPolicy); it also decides again whether export files may still go out. */
  policy: AccessPolicy & ReleasePolicy;
  /** The repository every write goes through (subscriptions listen to it). */
  repository: NotifyingRepository;
  fhirBase: string;
  /** Public base URL of the proxy (`https://host`), for download URLs. */
  baseUrl: string;
  authenticate: (headers: Record<string, string | undefined>, requestUrl: string) => Promise<AccessContext>;
  logger: Logger;
  audit?: (request: FhirRequest, response: FhirResponse) => void;
  settings?: ExchangeSettings;
  /** Every process's written versions in write order (the ledger's commitment store): subscriptions notify what the CLI wrote too. */
  commitments?: CommittedVersions;
  /** See SubscriptionServiceOptions.requesterCutOff. */
  requesterCutOff?: (access: StoredAccess) => boolean;
}

/** Builds export and subscriptions, registers their operations on the router and resumes jobs. */
export async function createExchange(options: ExchangeOptions): Promise<Exchange> {
  const settings = options.settings ?? exchangeSettings();
  const dir = path.join(options.dataDir, 'exports');
  const reader = new GuardedReader({ fhir: options.fhir, policy: options.policy, repository: options.repository });
  const deidentifiers = new StudyDeidentifiers(options.rootKey, { dateShift: settings.researchDateShift });
  const exports = new ExportService({
    dir, fhirBase: options.fhirBase, filesBase: `${options.baseUrl}/exports`, reader, repository: options.repository, releases: options.policy, deidentifiers,
    retryAfterSeconds: settings.retryAfterSeconds, retentionMs: settings.exportRetentionHours * 3_600_000,
    fileKey: deriveKey(options.rootKey, 'export-files'), logger: options.logger, audit: options.audit,
  });
  for (const op of exports.handlers()) options.fhir.registerOperation(op);
  const subscriptions = new SubscriptionService({
    dir, fhir: options.fhir, policy: options.policy, repository: options.repository, fhirBase: options.fhirBase, deidentifiers, settings, reader, logger: options.logger,
    ...(options.commitments ? { commitments: options.commitments } : {}),
    ...(options.requesterCutOff ? { requesterCutOff: options.requesterCutOff } : {}),
    headerKey: deriveKey(options.rootKey, 'subscription-headers'),
  });
  subscriptions.attach(options.fhir);
  exports.start();
  await subscriptions.start();
  return {
    exports,
    subscriptions,
    filesRouter: exportFilesRouter({ exports, authenticate: options.authenticate, logger: options.logger }),
    settings,
    async close() {
      await subscriptions.close();
      await exports.close();
    },
  };
}
