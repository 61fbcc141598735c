/**
 * Drives SMART launches the way an app would: the real `fhirclient` package (Node entry, with a
 * fake request/response and an in-memory session storage) builds the authorize URL and redeems
 * the code in `ready()`; this file plays the browser between them (GET authorize, post forms).
 */
import smart from 'fhirclient/lib/entry/node.js';
import type { IncomingMessage, ServerResponse } from 'node:http';

export type SmartClient = Awaited<ReturnType<ReturnType<typeof smart>['ready']>>;

export const APP_ORIGIN = 'http://localhost:3999';
export const REDIRECT_URI = `${APP_ORIGIN}/callback`;

class SessionStorage {
  private readonly data = new Map<string, unknown>();
  async get(key: string) { return this.data.get(key); }
  async set(key: string, value: unknown) { this.data.set(key, value); return value; }
  async unset(key: string) { return this.data.delete(key); }
}

function fakeRequest(url: string): IncomingMessage {
  const u = new URL(url, APP_ORIGIN);
  return { url: u.pathname + u.search, headers: { host: u.host }, socket: {} } as unknown as IncomingMessage;
}

const fakeResponse = { writeHead() { return this; }, end() { return this; } } as unknown as ServerResponse;

export class SmartApp {
  private readonly storage = new SessionStorage();

  /** fhirclient's authorize({ noRedirect: true }): the URL the browser would be sent to. */
  async authorizeUrl(options: { clientId: string; scope: string; iss?: string; launchUrl?: string; clientSecret?: string }): Promise<string> {
    const request = fakeRequest(options.launchUrl ?? `${APP_ORIGIN}/launch`);
    const url = await smart(request, fakeResponse, this.storage as never).authorize({
      clientId: options.clientId, scope: options.scope, redirectUri: REDIRECT_URI, noRedirect: true,
      ...(options.iss ? { iss: options.iss } : {}), ...(options.clientSecret ? { clientSecret: options.clientSecret } : {}),
    });
    return String(url);
  }

  /** fhirclient's ready() on the redirect target: exchanges the code for tokens. */
  async ready(callbackUrl: string): Promise<SmartClient> {
    return smart(fakeRequest(callbackUrl), fakeResponse, this.storage as never).ready();
  }
}

/** The browser: GET with cookies off and redirects not followed. */
export async function browse(url: string, form?: Record<string, string>): Promise<{ status: number; location?: string; html: string }> {
  const res = await fetch(url, form
    ? { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(form).toString() }
    : { redirect: 'manual' });
  return { status: res.status, location: res.headers.get('location') ?? undefined, html: await res.text() };
}

/** The hidden request id of a rendered page's form. */
export function requestIdOf(html: string): string {
  const match = /name="request" value="([^"]+)"/.exec(html);
  if (!match) throw new Error(`no request id in page: ${html.slice(0, 300)}`);
  return match[1]!;
}

/** Posts the login form (fields username, password) then, if shown, the patient picker, then the approval. */
export async function loginAndApprove(baseUrl: string, loginHtml: string, user: { username: string; password: string },
  options: { patient?: string; decision?: 'allow' | 'deny' } = {}): Promise<{ status: number; location?: string; html: string; pages: string[] }> {
  const pages: string[] = [loginHtml];
  let page = await browse(`${baseUrl}/oauth/login`, { request: requestIdOf(loginHtml), ...user });
  pages.push(page.html);
  if (page.status === 200 && page.html.includes('Choose a patient')) {
    page = await browse(`${baseUrl}/oauth/select-patient`, { request: requestIdOf(page.html), patient: options.patient ?? '' });
    pages.push(page.html);
  }
  if (page.status !== 200 || !page.html.includes('name="decision"')) return { ...page, pages };
  const decided = await browse(`${baseUrl}/oauth/approve`, { request: requestIdOf(page.html), decision: options.decision ?? 'allow' });
  return { ...decided, pages };
}
