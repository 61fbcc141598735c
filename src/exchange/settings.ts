/**
 * Settings of bulk export and subscriptions, from the environment (defaults in one place):
 * - GLUCOGUARD_EXPORT_RETRY_AFTER: seconds a client waits between status polls (default 2; polling
 *   sooner is a 429);
 * - GLUCOGUARD_EXPORT_RETENTION_HOURS: how long a finished export's files are kept (default 168,
 *   one week; the manifest's Expires says when), then deleted with the job;
 * - GLUCOGUARD_RESEARCH_DATE_SHIFT=true: research exports shift each patient's dates (default off);
 * - GLUCOGUARD_SUBSCRIPTION_ALLOW: comma-separated hosts, IPs or CIDRs that subscription endpoints
 *   may resolve to even when loopback/private (e.g. `127.0.0.1` for tests); default none;
 * - GLUCOGUARD_SUBSCRIPTION_HTTP=true: allow plain http endpoints (default: https only, except
 *   allow-listed hosts);
 * - GLUCOGUARD_SUBSCRIPTION_RETRIES: delivery attempts per notification (default 5);
 * - GLUCOGUARD_SUBSCRIPTION_RETRY_MS: first retry delay, doubled per attempt (default 500);
 * - GLUCOGUARD_SUBSCRIPTION_DIGEST_MS: period of digest Subscriptions (default one day).
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
}

export function exchangeSettings(env: NodeJS.ProcessEnv = process.env): ExchangeSettings {
  const int = (name: string, fallback: number, min: number, max: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === '') return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be an integer from ${min} to ${max}`);
    return n;
  };
  return {
    retryAfterSeconds: int('GLUCOGUARD_EXPORT_RETRY_AFTER', 2, 1, 3600),
    exportRetentionHours: int('GLUCOGUARD_EXPORT_RETENTION_HOURS', 168, 1, 8760),
    researchDateShift: env.GLUCOGUARD_RESEARCH_DATE_SHIFT === 'true',
    subscriptionAllow: (env.GLUCOGUARD_SUBSCRIPTION_ALLOW ?? '').split(',').map((s) => s.trim()).filter(Boolean),
    subscriptionAllowHttp: env.GLUCOGUARD_SUBSCRIPTION_HTTP === 'true',
    deliveryAttempts: int('GLUCOGUARD_SUBSCRIPTION_RETRIES', 5, 1, 20),
    retryBaseMs: int('GLUCOGUARD_SUBSCRIPTION_RETRY_MS', 500, 1, 600_000),
    digestMs: int('GLUCOGUARD_SUBSCRIPTION_DIGEST_MS', 86_400_000, 1000, 7 * 86_400_000),
  };
}
