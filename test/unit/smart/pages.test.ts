/** The sign-in page puts the cursor where the user types next: the username, or after a refusal that kept it, the password. */
import { expect, test } from '@jest/globals';
import { loginPage } from '../../../src/smart/pages.js';

const focused = (html: string) => /<input[^>]*\bid="(\w+)"[^>]*\bautofocus\b/.exec(html)?.[1];

test('a first sign-in focuses the username', () => {
  expect(focused(loginPage({ requestId: 'r', clientName: 'App' }))).toBe('username');
});

test('a sign-in shown again with its username focuses the password', () => {
  expect(focused(loginPage({ requestId: 'r', clientName: 'App', username: 'ana', error: 'Wrong username or password.' }))).toBe('password');
});
