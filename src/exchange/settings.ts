import { parseAllowEntry } from './endpoint.js';

/**
 * Settings of bulk export and subscriptions (defaults in one place), read with the rest of the
 * configuration by src/config.ts so a bad value stops start-up before anything is created:
 * - GLUCOGUARD_EXPORT_RETRY_AFTER: seconds a client waits between status polls (default 2; polling
 *   sooner is a 429);
 * - GLUCOGUARD_EXPORT_RETENTION_HOURS: how long a finished export's files are kept (default 168,
 *   one week; the manifest's Expires says when), then deleted with the job;
 * - GLUCOGUARD_RESEARCH_DATE_SHIFT=true: research exports shift each patient's dates (default off);
 * - GLUCOGUARD_SUBSCRIPTION_ALLOW: comma-separated hosts, IPs or CIDRs, each with an optional
 *   `:port` (`[IPv6]:port`), that subscription endpoints may resolve to even when loopback/private
 *   (e.g. `127.0.0.1:9000` for a local receiver); an entry without a port admits the default port
 *   (443, 80 for http) only; default none;
 * - GLUCOGUARD_SUBSCRIPTION_HTTP=true: allow plain http endpoints (default: https only, except
 *   allow-listed hosts);
 * - GLUCOGUARD_SUBSCRIPTION_RETRIES: delivery attempts per notification (default 5);
 * - GLUCOGUARD_SUBSCRIPTION_RETRY_MS: first retry delay, doubled per attempt (default 500);
 * - GLUCOGUARD_SUBSCRIPTION_DIGEST_MS: period of digest Subscriptions (default one day);
 * - GLUCOGUARD_SUBSCRIPTION_HEARTBEAT_MIN: shortest `backport-heartbeat-period` accepted, in
 *   seconds (default 60; a shorter one is refused with 422);
 * - GLUCOGUARD_SUBSCRIPTION_POLL_MS: how often the delivering server looks for versions other
 *   processes (the `glucoguard ingest` CLI) committed to the same data directory, to notify them,
 *   and for Subscriptions created, changed or deleted through another process (default 1000).
 */
export interface ExchangeSettings {
  retryAfterSeconds: number;
  exportRetentionHours: number;
  researchDateShift: boolean;
  subscriptionAllow: string[];
  subscriptionAllowHttp: boolean;
  deliveryAttempts: number;
  /** First retry delay (ms), doubled per attempt. */
  retryBaseMs: number;
  digestMs: number;
  /** Shortest heartbeat period accepted (seconds). */
  heartbeatMinSeconds: number;
  /** Period of the look for other processes' writes (ms). */
  foreignWritesPollMs: number;
}

/** The variables read here (src/config.ts accepts them in the GLUCOGUARD_CONFIG file too). */
export const EXCHANGE_VARIABLES = [
  'GLUCOGUARD_EXPORT_RETRY_AFTER', 'GLUCOGUARD_EXPORT_RETENTION_HOURS', 'GLUCOGUARD_RESEARCH_DATE_SHIFT',
  'GLUCOGUARD_SUBSCRIPTION_ALLOW', 'GLUCOGUARD_SUBSCRIPTION_HTTP', 'GLUCOGUARD_SUBSCRIPTION_RETRIES',
  'GLUCOGUARD_SUBSCRIPTION_RETRY_MS', 'GLUCOGUARD_SUBSCRIPTION_DIGEST_MS', 'GLUCOGUARD_SUBSCRIPTION_HEARTBEAT_MIN',
  'GLUCOGUARD_SUBSCRIPTION_POLL_MS',
] as const;

/** Reads the settings through `get`, adding one message per bad value to `problems`. */
export function readExchangeSettings(get: (name: string) => string | undefined, problems: string[]): ExchangeSettings {
  const int = (name: string, fallback: number, min: number, max: number): number => {
    const raw = get(name);
    if (raw === undefined || raw === '') return fallback;
    const n = Number(raw);
    if (!/^-?\d+$/.test(raw.trim()) || n < min || n > max) {
      problems.push(`${name} must be an integer from ${min} to ${max} (got "${raw}")`);
      return fallback;
    }
    return n;
  };
  const bool = (name: string): boolean => {
    const raw = get(name);
    if (raw === undefined || raw === '' || raw === 'false') return false;
    if (raw === 'true') return true;
    problems.push(`${name} must be true or false (got "${raw}")`);
    return false;
  };
  return {
    retryAfterSeconds: int('GLUCOGUARD_EXPORT_RETRY_AFTER', 2, 1, 3600),
    exportRetentionHours: int('GLUCOGUARD_EXPORT_RETENTION_HOURS', 168, 1, 8760),
    researchDateShift: bool('GLUCOGUARD_RESEARCH_DATE_SHIFT'),
    subscriptionAllow: allowList(get('GLUCOGUARD_SUBSCRIPTION_ALLOW'), problems),
    subscriptionAllowHttp: bool('GLUCOGUARD_SUBSCRIPTION_HTTP'),
    deliveryAttempts: int('GLUCOGUARD_SUBSCRIPTION_RETRIES', 5, 1, 20),
    retryBaseMs: int('GLUCOGUARD_SUBSCRIPTION_RETRY_MS', 500, 1, 600_000),
    digestMs: int('GLUCOGUARD_SUBSCRIPTION_DIGEST_MS', 86_400_000, 1000, 7 * 86_400_000),
    heartbeatMinSeconds: int('GLUCOGUARD_SUBSCRIPTION_HEARTBEAT_MIN', 60, 1, 86_400),
    foreignWritesPollMs: int('GLUCOGUARD_SUBSCRIPTION_POLL_MS', 1000, 100, 60_000),
  };
}

/** The settings from environment variables alone; throws naming every bad value. */
export function exchangeSettings(env: NodeJS.ProcessEnv = process.env): ExchangeSettings {
  const problems: string[] = [];
  const settings = readExchangeSettings((name) => env[name], problems);
  if (problems.length) throw new Error(problems.join('; '));
  return settings;
}

/** The allow-list entries, each checked here so a typo stops the start with a message naming it. */
function allowList(raw: string | undefined, problems: string[]): string[] {
  const entries = (raw ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  for (const entry of entries) {
    try {
      parseAllowEntry(entry);
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  return entries;
}
