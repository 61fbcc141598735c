/** `consent grant` and `consent list` print one line per Consent; the grantee column is what `--to` took. */
import { describe, expect, test } from '@jest/globals';
import { consentFromOptions, formatConsent } from '../../../src/consent/cli.js';

const options = { patient: 'p1', dataFrom: '2026-01-01', dataTo: '2026-06-30', until: '2026-12-31', purpose: ['TREAT'] };

describe('the consent line', () => {
  test('shows a Client/<client_id> grantee (kept as an identifier) as Client/<client_id>', () => {
    const consent = { ...consentFromOptions({ ...options, to: 'Client/dexcom-clarity' }, Date.parse('2026-02-01T00:00:00Z')), id: 'c1' };
    expect(consent.provision?.actor?.[0]?.reference?.reference).toBeUndefined();
    expect(formatConsent(consent, Date.parse('2026-02-01T00:00:00Z')).split('  ').slice(0, 3)).toEqual(['c1', 'active', 'Client/dexcom-clarity']);
  });

  test('shows a referenced grantee as its reference', () => {
    const consent = { ...consentFromOptions({ ...options, to: 'Practitioner/7' }, Date.parse('2026-02-01T00:00:00Z')), id: 'c2' };
    expect(formatConsent(consent, Date.parse('2026-02-01T00:00:00Z')).split('  ').slice(0, 3)).toEqual(['c2', 'active', 'Practitioner/7']);
  });

  test('an active Consent whose access period is over says it ended (the resource keeps status active)', () => {
    const consent = { ...consentFromOptions({ ...options, to: 'Practitioner/7' }, Date.parse('2026-02-01T00:00:00Z')), id: 'c3' };
    const end = Date.parse(consent.provision!.period!.end!);
    expect(formatConsent(consent, end - 1).split('  ')[1]).toBe('active');
    expect(formatConsent(consent, end).split('  ')[1]).toBe('active (ended)');
  });
});
