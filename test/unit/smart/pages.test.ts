/**
 * The sign-in page puts the cursor where the user types next: the username, or after a refusal that
 * kept it, the password. The picker and the approval page name a patient alike.
 */
import { expect, test } from '@jest/globals';
import { loginPage, patientLabel, patientPickerPage } from '../../../src/smart/pages.js';

const focused = (html: string) => /<input[^>]*\bid="(\w+)"[^>]*\bautofocus\b/.exec(html)?.[1];

test('a first sign-in focuses the username', () => {
  expect(focused(loginPage({ requestId: 'r', clientName: 'App' }))).toBe('username');
});

test('a sign-in shown again with its username focuses the password', () => {
  expect(focused(loginPage({ requestId: 'r', clientName: 'App', username: 'ana', error: 'Wrong username or password.' }))).toBe('password');
});

test('a patient is named by name and birth date with the FHIR id, by id alone when the record has no name, and says so when the name is withheld', () => {
  expect(patientLabel({ id: 'p1', name: 'Ana Rivera', birthDate: '1950-04-02' })).toBe('Ana Rivera, born 1950-04-02 (Patient/p1)');
  expect(patientLabel({ id: 'p1', name: 'Ana Rivera' })).toBe('Ana Rivera (Patient/p1)');
  expect(patientLabel({ id: 'p2', birthDate: '1961-01-30' })).toBe('Patient/p2, born 1961-01-30');
  expect(patientLabel({ id: 'p2' })).toBe('Patient/p2');
  expect(patientLabel({ id: 'p3', withheld: true })).toBe('Patient p3 (name not shared with you)');
  // the picker lists them the same way (escaped)
  const html = patientPickerPage({ requestId: 'r', clientName: 'App', query: '', patients: [{ id: 'p4', name: 'Zoë <O\'Neil>' }, { id: 'p3', withheld: true }] });
  expect(html).toContain('Zoë &lt;O&#39;Neil&gt; (Patient/p4)');
  expect(html).toContain('Patient p3 (name not shared with you)');
  expect(html).not.toContain('(p3)');
});
