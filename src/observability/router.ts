/**
 * Operator endpoints, mounted at `/` before everything else: `GET /healthz` (the process is alive
 * and serving; also at `/livez`, the name Kubernetes probes use), `GET /readyz` (every readiness check passes: 200, else 503 naming the failed ones)
 * and `GET /metrics` (Prometheus text format). None of them carries health data. Expose /metrics
 * and /readyz to the monitoring network only; the load balancer needs /readyz.
 */
import express, { type Router } from 'express';
import type { Readiness } from './readiness.js';
import { registry } from './metrics.js';

export function observabilityRouter(readiness: Readiness): Router {
  const r = express.Router();
  r.get(['/healthz', '/livez'], (_req, res) => {
    res.set('Cache-Control', 'no-store').json({ status: 'ok' });
  });
  r.get('/readyz', async (_req, res) => {
    const report = await readiness.run();
    res.status(report.status === 'ready' ? 200 : 503).set('Cache-Control', 'no-store').json(report);
  });
  r.get('/metrics', async (_req, res) => {
    // A scrape refreshes the dependency gauges, so they are never older than the scrape interval.
    await readiness.run();
    res.set('Content-Type', registry.contentType).set('Cache-Control', 'no-store').send(await registry.metrics());
  });
  return r;
}
