/**
 * POST /smart/launch: an EHR system client holding `system/launch` creates a launch context
 * (JSON or form body: patient, practitioner, client_id, encounter?, fhirContext?, need_patient_banner?,
 * intent?). The app must be registered and the patient and practitioner held by the server
 * (launch.ts); otherwise 400 `invalid_request` naming what is wrong, as for a field it does not take
 * (ignored, a misspelt one would launch without the context the EHR meant to give).
 */
import type { Request, Response } from 'express';
import { isGlucoGuardError, isPassingOutage } from '../errors.js';
import type { SmartContext } from './context.js';
import { createLaunch } from './launch.js';
import { BearerTokenError, authenticateBearer } from './resource.js';

const LAUNCH_FIELDS = ['patient', 'practitioner', 'client_id', 'encounter', 'fhirContext', 'need_patient_banner', 'intent'];

export function launchHandler(ctx: SmartContext) {
  return async (req: Request, res: Response): Promise<void> => {
    res.set({ 'Cache-Control': 'no-store' });
    try {
      const access = await authenticateBearer(ctx.tokens, req.headers as Record<string, string | undefined>);
      if (!access.scopes.includes('system/launch')) {
        res.status(403).set('WWW-Authenticate', 'Bearer error="insufficient_scope", scope="system/launch"')
          .json({ error: 'insufficient_scope', error_description: 'system/launch is required' });
        return;
      }
      const body = (req.body ?? {}) as Record<string, unknown>;
      const unknown = Object.keys(body).find((k) => !LAUNCH_FIELDS.includes(k));
      if (unknown !== undefined) {
        res.status(400).json({ error: 'invalid_request', error_description: `${unknown.slice(0, 64)} is not a field of a launch (it takes ${LAUNCH_FIELDS.join(', ')})` });
        return;
      }
      const created = await createLaunch({ kv: ctx.kv, store: ctx.store, fhirBase: ctx.urls.fhirBase, ...(ctx.resourceExists ? { resourceExists: ctx.resourceExists } : {}) }, {
        patient: body.patient, encounter: body.encounter, practitioner: body.practitioner,
        clientId: body.client_id, fhirContext: body.fhirContext, needPatientBanner: body.need_patient_banner, intent: body.intent,
      });
      res.status(201).json({ launch: created.launch, expires_in: created.expiresIn, ...(created.launchUrl ? { launch_url: created.launchUrl } : {}) });
    } catch (err) {
      if (err instanceof BearerTokenError) {
        res.status(err.status).set(err.headers).json({ error: err.status === 400 ? 'invalid_request' : 'invalid_token', error_description: err.message });
      } else if (isGlucoGuardError(err) && err.status < 500) {
        res.status(err.status).json({ error: 'invalid_request', error_description: err.message });
      } else if (isPassingOutage(err)) {
        // the KV store, or the repository asked whether the patient and practitioner exist, did not answer
        res.status(503).json({ error: 'temporarily_unavailable', error_description: 'Service temporarily unavailable' });
      } else {
        ctx.logger.error({ err }, 'launch creation failed');
        res.status(500).json({ error: 'server_error', error_description: 'Internal error' });
      }
    }
  };
}
