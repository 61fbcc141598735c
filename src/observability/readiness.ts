/**
 * Readiness: a list of named checks, each proving one dependency answers (repository, KV, chain,
 * upstream…). `GET /readyz` answers 200 when all pass and 503 naming the failed ones. Other modules
 * add their own check with `app.readiness.add({ name: 'chain', check: async () => … })`.
 *
 * A failed check reports only a stable code (`ERR_UNAVAILABLE`, `timeout`, `failed`) to the
 * client; the detail, which may name hosts, is logged server-side.
 */
import { isGlucoGuardError } from '../errors.js';
import type { KeyValueStore } from '../kv/port.js';
import type { Logger } from '../log.js';
import type { Repository } from '../repository/port.js';
import { metrics } from './metrics.js';

export interface ReadinessCheck {
  /** Stable name shown in `/readyz` and the `dependency` label of `glucoguard_dependency_up`. */
  name: string;
  /** Which adapter serves it (`embedded`, `upstream`, `memory`, `redis`…), for operators. */
  adapter?: string;
  /** Resolves when the dependency answers; throws (or rejects) when it does not. */
  check(): Promise<void>;
  /** Give up after this long (default 2000 ms). */
  timeoutMs?: number;
}

export interface CheckResult {
  name: string;
  adapter?: string;
  ok: boolean;
  ms: number;
  /** Stable code when not ok: an ErrorCode from src/errors.ts, `timeout` or `failed`. */
  error?: string;
}

export interface ReadinessReport {
  status: 'ready' | 'unavailable';
  checks: CheckResult[];
}

const DEFAULT_TIMEOUT_MS = 2000;

export class Readiness {
  private readonly checks: ReadinessCheck[] = [];
  private inFlight: Promise<ReadinessReport> | undefined;

  constructor(private readonly logger: Logger, checks: ReadinessCheck[] = []) {
    for (const c of checks) this.add(c);
  }

  /** Adds a check; a second check with the same name replaces the first. */
  add(check: ReadinessCheck): void {
    const at = this.checks.findIndex((c) => c.name === check.name);
    if (at >= 0) this.checks[at] = check;
    else this.checks.push(check);
  }

  names(): string[] {
    return this.checks.map((c) => c.name);
  }

  /** Runs every check in parallel; concurrent callers share one run so probes cannot pile up. */
  run(): Promise<ReadinessReport> {
    this.inFlight ??= this.runAll().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  private async runAll(): Promise<ReadinessReport> {
    const checks = await Promise.all(this.checks.map((c) => this.runOne(c)));
    return { status: checks.every((c) => c.ok) ? 'ready' : 'unavailable', checks };
  }

  private async runOne(c: ReadinessCheck): Promise<CheckResult> {
    const started = performance.now();
    let error: string | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new CheckTimeout()), c.timeoutMs ?? DEFAULT_TIMEOUT_MS);
      });
      await Promise.race([Promise.resolve().then(() => c.check()), timeout]);
    } catch (err) {
      error = err instanceof CheckTimeout ? 'timeout' : isGlucoGuardError(err) ? err.code : stableCode(err) ?? 'failed';
      this.logger.warn({ check: c.name, error, cause: describe(err) }, 'readiness check failed');
    } finally {
      clearTimeout(timer);
    }
    const ms = performance.now() - started;
    const labels = { dependency: c.name };
    metrics.dependencyUp.set(labels, error ? 0 : 1);
    metrics.dependencyCheckDuration.set(labels, ms / 1000);
    return { name: c.name, ...(c.adapter ? { adapter: c.adapter } : {}), ok: !error, ms: Math.round(ms * 10) / 10, ...(error ? { error } : {}) };
  }
}

class CheckTimeout extends Error {}

/** The stable `code` of an error class of its own kind (`ERR_ANCHOR_SEQUENCE`…), never its message. */
function stableCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^ERR_[A-Z0-9_]+$/.test(code) ? code : undefined;
}

function describe(err: unknown): string {
  if (isGlucoGuardError(err)) {
    const cause = err.cause instanceof Error ? `: ${err.cause.name}: ${err.cause.message}` : '';
    return `${err.code}${cause}`;
  }
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

const PROBE_ID = 'glucoguard-readiness-probe';

/**
 * The repository answers a read of an id that never exists: "not found" (or "gone") proves the
 * store (or the upstream server) is reachable without reading or writing any patient's data.
 */
export function repositoryCheck(repository: Repository): ReadinessCheck {
  return {
    name: 'repository',
    adapter: repository.description.adapter,
    check: async () => {
      try {
        await repository.read('Patient', PROBE_ID);
      } catch (err) {
        if (isGlucoGuardError(err, 'ERR_NOT_FOUND') || isGlucoGuardError(err, 'ERR_GONE')) return;
        throw err;
      }
    },
  };
}

/** The KV store takes a short-lived write and reads it back (Redis reachable and writable). */
export function kvCheck(kv: KeyValueStore): ReadinessCheck {
  return {
    name: 'kv',
    adapter: kv.description.adapter,
    check: async () => {
      const value = String(Date.now());
      await kv.set(`readyz:${PROBE_ID}`, value, 10_000);
      if ((await kv.get(`readyz:${PROBE_ID}`)) === undefined) throw new Error('KV lost a value it just stored');
    },
  };
}

/** What the chain check needs from the chain port (src/ledger/client.ts `ChainClient` fits). */
export interface ChainHead {
  readonly description: { adapter: string };
  readonly authorityAddress: string;
  head(): Promise<number>;
}

/**
 * The chain node answers its latest block number; the check also refreshes the chain head and
 * signer gauges, so every scrape of /metrics shows them.
 */
export function chainCheck(chain: ChainHead): ReadinessCheck {
  return {
    name: 'chain',
    adapter: chain.description.adapter,
    check: async () => {
      metrics.chainHead.set(await chain.head());
      metrics.chainSigner.set({ address: chain.authorityAddress }, 1);
    },
  };
}

/** What the anchoring check needs from the anchorer (src/ledger/anchor.ts `Anchorer` fits). */
export interface AnchoringState {
  /** Why anchoring cannot go on (an error with a stable `code`), or undefined while it can. */
  problem(): (Error & { code: string }) | undefined;
}

/**
 * Anchoring can go on: fails (with the problem's code, e.g. `ERR_ANCHOR_SEQUENCE`) while the
 * contract refuses this store's sequence numbers, a state no retry ends. A chain that does not
 * answer is the `chain` check's; the lag it causes is `glucoguard_anchoring_lag_seconds`.
 */
export function anchoringCheck(anchorer: AnchoringState): ReadinessCheck {
  return {
    name: 'anchoring',
    check: async () => {
      const problem = anchorer.problem();
      if (problem) throw problem;
    },
  };
}
