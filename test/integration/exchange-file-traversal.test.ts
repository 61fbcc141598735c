/** Export file names are ids, never paths: traversal attempts on /exports answer 404 and reveal nothing. */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

describe('export file names', () => {
  let t: TestApp;
  let token: string;
  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    token = t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'study', sub: 'study', scopes: ['system/*.rs'] }).token;
  }, 60_000);
  afterAll(async () => {
    await t?.close();
  });

  test.each([
    '/exports/..%2F..%2F..%2Fetc/passwd',
    '/exports/x/..%2Fjobs.sqlite',
    '/exports/%2e%2e/%2e%2e%2fkeys%2fmaster.key',
    '/exports/job/..%5c..%5ckeys%5cmaster.key',
    '/exports/job/file.ndjson%00.txt',
    '/exports/....//....//etc/passwd',
  ])('%s is a 404 without file content or server paths', async (path) => {
    const res = await request(t.app.http).get(path).set('Authorization', `Bearer ${token}`);
    expect([400, 404]).toContain(res.status);
    expect(res.text).not.toMatch(/root:|BEGIN|SQLite format|\/tmp\/|gg-test-/);
  });
});
