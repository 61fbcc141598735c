/**
 * Prometheus metrics (prom-client), one registry per process, scraped at `GET /metrics`.
 *
 * Other modules record values through the exported `metrics` object, for example
 * `metrics.consentDecisions.inc({ outcome: 'permit' })` or `metrics.chainHead.set(blockNumber)`.
 * Labels are always from small, fixed sets (route templates, outcomes, dependency names): never
 * ids, names, scopes or anything a client chose, so a scrape reveals no health data and an attacker
 * cannot grow the label space.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

export const registry = new Registry();
registry.setDefaultLabels({ service: 'glucoguard' });
collectDefaultMetrics({ register: registry });

export const metrics = {
  /** Every HTTP request, observed when the response finishes. `route` is a template (see routes.ts). */
  httpRequestDuration: new Histogram({
    name: 'glucoguard_http_request_duration_seconds',
    help: 'HTTP request latency by method, route template and status code',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  }),
  /** Consent decision point results: outcome is `permit`, `deny` or `error` (fail closed). */
  consentDecisions: new Counter({
    name: 'glucoguard_consent_decisions_total',
    help: 'Consent decisions by outcome (permit, deny, error)',
    labelNames: ['outcome'] as const,
    registers: [registry],
  }),
  /**
   * Searches refused as too costly (400 `too-costly`: the scan limit, or a chain selecting too much),
   * by the searched resource type: what to watch when choosing GLUCOGUARD_SEARCH_SCAN_LIMIT.
   */
  searchesTooCostly: new Counter({
    name: 'glucoguard_searches_too_costly_total',
    help: 'FHIR searches refused as too costly (scan limit or chain limit), by resource type',
    labelNames: ['type'] as const,
    registers: [registry],
  }),
  /** Seconds between the oldest stored-but-unanchored resource version and now (0 when none wait). */
  anchoringLag: new Gauge({
    name: 'glucoguard_anchoring_lag_seconds',
    help: 'Age of the oldest resource version not yet anchored on chain',
    registers: [registry],
  }),
  /** Anchor transactions by outcome (`confirmed`, `failed`; src/ledger/anchor.ts). */
  anchors: new Counter({
    name: 'glucoguard_anchors_total',
    help: 'Anchor transactions by outcome',
    labelNames: ['outcome'] as const,
    registers: [registry],
  }),
  /** Commitments missing from the commitment store (removed from it), as the last check found (src/ledger/index.ts). */
  commitmentsMissing: new Gauge({
    name: 'glucoguard_commitments_missing',
    help: 'Commitments missing from the commitment store at the last check (removed; run glucoguard verify)',
    registers: [registry],
  }),
  /** Versions whose first read is one hash, proven against the chain at start-up (src/ledger/proven-index.ts); 0 while none are. */
  provenAhead: new Gauge({
    name: 'glucoguard_integrity_proven_ahead_versions',
    help: 'Resource versions proven against their anchored roots ahead of their first reads (GLUCOGUARD_PROVE_AHEAD)',
    registers: [registry],
  }),
  /** Latest block number the proxy has seen from its chain node. */
  chainHead: new Gauge({
    name: 'glucoguard_chain_head_block',
    help: 'Latest block number seen from the chain node',
    registers: [registry],
  }),
  /** Always 1, labelled with the signer address the proxy anchors with (an address is public, not health data). */
  chainSigner: new Gauge({
    name: 'glucoguard_chain_signer_info',
    help: 'Address of the account the proxy signs anchor transactions with (value is always 1)',
    labelNames: ['address'] as const,
    registers: [registry],
  }),
  /** Items waiting per queue: `anchor` (versions not anchored yet: queued, or in a batch not confirmed on chain), `subscription` (notifications), `export` jobs… */
  /** Access-log events given up after their writes kept failing (src/audit/recorder.ts): each is an access no log holds. */
  auditEventsLost: new Counter({
    name: 'glucoguard_audit_events_lost_total',
    help: 'Access-log AuditEvents given up after their writes kept failing (or still failing at shutdown)',
    registers: [registry],
  }),
  queueDepth: new Gauge({
    name: 'glucoguard_queue_depth',
    help: 'Items waiting in each internal queue',
    labelNames: ['queue'] as const,
    registers: [registry],
  }),
  /**
   * 1 when the dependency answered its last readiness check, 0 when not: one per check of `/readyz`
   * (`repository` — the embedded store or the upstream —, `kv` — embedded or Redis —, `chain`, `anchoring`).
   */
  dependencyUp: new Gauge({
    name: 'glucoguard_dependency_up',
    help: 'Whether a dependency answered its last readiness check (1) or not (0)',
    labelNames: ['dependency'] as const,
    registers: [registry],
  }),
  /** Duration of the last readiness check per dependency. */
  dependencyCheckDuration: new Gauge({
    name: 'glucoguard_dependency_check_seconds',
    help: 'Duration of the last readiness check per dependency',
    labelNames: ['dependency'] as const,
    registers: [registry],
  }),
} as const;

export type Metrics = typeof metrics;
