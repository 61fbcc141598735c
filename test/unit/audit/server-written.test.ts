/** The access log's write refusal in the policy layer the router asks (src/audit/server-written.ts), without HTTP. */
import { describe, expect, test } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import { isGlucoGuardError } from '../../../src/errors.js';
import { OPEN_ACCESS, type AccessContext } from '../../../src/fhir/access.js';
import { OPEN_POLICY } from '../../../src/fhir/policy.js';
import { SmartScopePolicy } from '../../../src/smart/policy.js';

const systemWriter: AccessContext = { kind: 'token', clientId: 'backend', subject: 'backend', scopes: ['system/*.cruds'] };
const event = { resourceType: 'AuditEvent', id: 'e1' } as Resource;

function refusal(run: () => unknown): { status: number; allow?: string; code?: string } {
  try {
    run();
  } catch (err) {
    if (!isGlucoGuardError(err)) throw err;
    return { status: err.status, allow: err.headers?.Allow, code: err.issues[0]?.code };
  }
  throw new Error('not refused');
}

describe('no requester writes AuditEvents through the facade', () => {
  const policies = [['OPEN_POLICY', OPEN_POLICY], ['SmartScopePolicy', new SmartScopePolicy()]] as const;
  for (const [name, policy] of policies) {
    for (const access of [OPEN_ACCESS, systemWriter]) {
      test(`${name}, ${access.kind} access: create, update and delete are 405 with Allow: GET, HEAD; reads are not touched`, () => {
        for (const interaction of ['create', 'update', 'delete'] as const) {
          expect(refusal(() => policy.authorize(access, interaction, 'AuditEvent'))).toEqual({ status: 405, allow: 'GET, HEAD', code: 'not-supported' });
          expect(refusal(() => policy.mayWrite(access, event, interaction))).toMatchObject({ status: 405 });
        }
        for (const interaction of ['read', 'vread', 'search', 'history', 'history-type'] as const) {
          expect(() => policy.authorize(access, interaction, 'AuditEvent')).not.toThrow();
        }
        // other types keep their rules
        expect(() => policy.authorize(access, 'create', 'Observation')).not.toThrow();
      });
    }
  }
});
