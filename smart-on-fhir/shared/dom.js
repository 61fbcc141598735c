// Small DOM helpers shared by both apps (no framework: plain ES modules served as they are).
const SVG_NS = 'http://www.w3.org/2000/svg';

/** Creates an element: el('p', { class: 'x' }, 'text', child). Attributes starting with "on" become listeners. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  return fill(node, attrs, children);
}

export function svg(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

function fill(node, attrs, children) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** Replaces the content of a container. */
export function show(container, ...children) {
  container.replaceChildren(...children.flat().filter((c) => c !== undefined && c !== null && c !== false));
  return container;
}

/** A notice box; kind: info | warn | error | ok. */
export function notice(kind, title, ...body) {
  return el('div', { class: `notice ${kind === 'info' ? '' : kind}`, role: kind === 'error' || kind === 'warn' ? 'alert' : 'status', 'data-notice': kind },
    el('p', {}, el('strong', {}, title)), ...body.map((b) => (typeof b === 'string' ? el('p', {}, b) : b)));
}

const dateFmt = new Intl.DateTimeFormat('en-GB', { day: 'numeric', month: 'short', year: 'numeric' });
const dateTimeFmt = new Intl.DateTimeFormat('en-GB', { day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit' });

/** FHIR dates without a time (year, month or day precision): they name a whole span, not an instant. */
const DATE_ONLY = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/;
// A date-only value is a calendar date: formatted in UTC, where `Date.UTC` put it, so no time zone moves it a day.
const dayFmt = new Intl.DateTimeFormat('en-GB', { day: 'numeric', month: 'short', year: 'numeric', timeZone: 'UTC' });
const monthFmt = new Intl.DateTimeFormat('en-GB', { month: 'short', year: 'numeric', timeZone: 'UTC' });

/** True for a FHIR date with no time (`2027`, `2027-01`, `2027-01-01`). */
export function isDateOnly(value) {
  return typeof value === 'string' && DATE_ONLY.test(value);
}

/** A date (an instant in the local time zone, or a date-only value as the calendar date it names). */
export function fmtDate(iso) {
  if (!iso) return '';
  const date = DATE_ONLY.exec(iso);
  if (!date) return dateFmt.format(new Date(iso));
  const [, y, m, d] = date;
  if (d) return dayFmt.format(Date.UTC(Number(y), Number(m) - 1, Number(d)));
  if (m) return monthFmt.format(Date.UTC(Number(y), Number(m) - 1, 1));
  return y;
}

/** An instant with its time; a date-only value has no time and is shown as a date. */
export function fmtDateTime(iso) {
  if (!iso) return '';
  return isDateOnly(iso) ? fmtDate(iso) : dateTimeFmt.format(new Date(iso));
}

/**
 * The end of an access or data period in words. An end given as a date includes the whole of that
 * day (month, year) — src/consent/terms.ts enforces it so, datatypes.html#Period — so it reads
 * "the end of 1 Jan 2027", never as midnight at its start; an instant reads with its time.
 */
export function endWords(value) {
  if (!value) return '';
  return isDateOnly(value) ? `the end of ${fmtDate(value)}` : fmtDateTime(value);
}

/** The last millisecond a period end stands for (a date-only end: the end of that span, in UTC, as terms.ts reads it). */
export function endInstant(value) {
  const date = typeof value === 'string' ? DATE_ONLY.exec(value) : null;
  if (!date) return Date.parse(value ?? '');
  const [, y, m, d] = date;
  const next = d ? Date.UTC(Number(y), Number(m) - 1, Number(d) + 1) : m ? Date.UTC(Number(y), Number(m), 1) : Date.UTC(Number(y) + 1, 0, 1);
  return next - 1;
}

export const PURPOSE_WORDS = {
  TREAT: 'your treatment', ETREAT: 'emergency treatment', CAREMGT: 'managing your care', COC: 'continuity of your care',
  HRESCH: 'health research', PATRQT: 'your own request', FAMRQT: 'a family request', PWATRNY: 'your power of attorney',
  SUPNWK: 'your support network', HPAYMT: 'payment', HOPERAT: 'health care operations',
};

export const STATE_WORDS = {
  pending: 'Waiting to be recorded', active: 'Active', 'not-started': 'Not started yet', expired: 'Ended (expired)', revoked: 'Stopped (revoked)',
};

/** The purposes of a grant as the clinician reads them (PURPOSE_WORDS speak to the patient). */
export const CLINICIAN_PURPOSE_WORDS = {
  TREAT: 'treatment', ETREAT: 'emergency treatment', CAREMGT: 'care management', COC: 'continuity of care',
  HRESCH: 'health research', PATRQT: "the patient's own request", FAMRQT: 'a family request', PWATRNY: "the patient's power of attorney",
  SUPNWK: "the patient's support network", HPAYMT: 'payment', HOPERAT: 'health care operations',
};

/** Resource types a grant may name, in words, in this order; any other type is named as it is. */
const CLASS_WORDS = {
  Observation: 'glucose readings and summaries', DiagnosticReport: 'reports', Device: 'devices',
  MedicationAdministration: 'insulin doses', Patient: 'name and date of birth',
};

/**
 * What a grant covers, in words, from its resource types; `whose` the record is to the reader ("your",
 * "the patient's"). Every type is said: a grant of the name and devices beside the readings reads so.
 */
export function dataWords(classes, whose = 'your') {
  if (!classes || classes.length === 0) return `everything in ${whose} record`;
  const known = Object.keys(CLASS_WORDS).filter((c) => classes.includes(c)).map((c) => CLASS_WORDS[c]);
  return [...known, ...new Set(classes.filter((c) => !(c in CLASS_WORDS)))].join(', ');
}

/**
 * The app's access token. fhirclient forgets the token after a 401 (a session that ended): the
 * calls that follow then fail as that 401 did, never with a TypeError.
 */
function bearer(client) {
  const token = client?.state?.tokenResponse?.access_token;
  if (!token) throw Object.assign(new Error('Your session has ended'), { status: 401 });
  return `Bearer ${token}`;
}

/**
 * Sign-out can cut the session's requests short (endRequests): from `cancellableRequests(client)`
 * on, every request of the session — fhirclient's `client.request`, the pages it follows, api() and
 * apiSend(), and whatever an app ties to `sessionSignal(client)` (the portal's upload) — carries the
 * session's AbortSignal. Sign-out aborts them before it revokes the tokens,
 * so none reaches the server after the revocation and comes back 401 to a page that is leaving. A
 * request that fails because it was aborted never settles: the page is leaving, and no handler
 * should report a failure the user asked for.
 */
const SESSIONS = new WeakMap();

export function cancellableRequests(client) {
  if (SESSIONS.has(client)) return client;
  const controller = new AbortController();
  SESSIONS.set(client, controller);
  const request = client.request.bind(client);
  client.request = (options, ...rest) => {
    const withSignal = typeof options === 'string' || options instanceof URL ? { url: String(options) } : { ...options };
    withSignal.signal = withSignal.signal ? AbortSignal.any([withSignal.signal, controller.signal]) : controller.signal;
    return unlessEnded(controller.signal, request(withSignal, ...rest));
  };
  return client;
}

/** The session's AbortSignal (see cancellableRequests); undefined before cancellableRequests. */
export function sessionSignal(client) {
  return SESSIONS.get(client)?.signal;
}

/** Aborts every request of the session still under way (see cancellableRequests). */
export function endRequests(client) {
  SESSIONS.get(client)?.abort();
}

function unlessEnded(signal, promise) {
  if (!signal) return promise;
  return promise.catch((err) => (signal.aborted ? new Promise(() => {}) : Promise.reject(err)));
}

/** Calls the GlucoGuard web API with the app's access token. */
export function api(client, path) {
  return call(client, path, 'GET');
}

/** Sends JSON to the GlucoGuard web API (POST/PUT) with the app's access token. */
export function apiSend(client, path, method, body) {
  return call(client, path, method, body === undefined ? undefined : JSON.stringify(body));
}

/** One web API request of the session: its JSON answer, or an Error with the status and the OperationOutcome. */
function call(client, path, method, json) {
  const signal = SESSIONS.get(client)?.signal;
  return unlessEnded(signal, (async () => {
    const headers = { Authorization: bearer(client), Accept: 'application/json', ...(method === 'GET' ? {} : { 'Content-Type': 'application/json' }) };
    const res = await fetch(path, { method, headers, body: json, signal });
    const answer = await res.json().catch(() => undefined);
    if (!res.ok) {
      const err = new Error(answer?.issue?.[0]?.diagnostics ?? `HTTP ${res.status}`);
      err.status = res.status;
      err.body = answer;
      throw err;
    }
    return answer;
  })());
}

/** HTTP status of an error thrown by fhirclient (or our api()). */
export function statusOf(err) {
  return err?.status ?? err?.statusCode ?? err?.response?.status;
}

/**
 * The OperationOutcome of a failed fhirclient request. Its HttpError reads the body into the message
 * (`<status>\nURL: …\n\n<JSON>` and sometimes a line of advice after it) and keeps no copy: the
 * JSON is taken back out of the message.
 */
function outcomeOf(err) {
  const message = typeof err?.message === 'string' ? err.message : '';
  const start = message.indexOf('\n\n{');
  const end = message.lastIndexOf('}');
  if (err?.name !== 'HttpError' || start < 0 || end < start) return undefined;
  try {
    const body = JSON.parse(message.slice(start + 2, end + 1));
    return body?.resourceType === 'OperationOutcome' ? body : undefined;
  } catch {
    return undefined;
  }
}

/** True when the error says the sign-in is over (401: token expired, revoked, or its user disabled). */
export function sessionEnded(err) {
  return statusOf(err) === 401;
}

/**
 * What a failed request means for the reader, in words: the server's own diagnostics when it sent an
 * OperationOutcome, else a plain sentence. Never fhirclient's message, which carries the request URL,
 * the raw response body and developer advice ("Please launch it as SMART app!").
 */
export function problemOf(err) {
  const issue = outcomeOf(err)?.issue?.[0] ?? err?.body?.issue?.[0];
  if (typeof issue?.diagnostics === 'string') return issue.diagnostics;
  if (sessionEnded(err)) return 'your sign-in has ended';
  if (err?.status || err?.statusCode) return `the server answered ${statusOf(err)}`;
  // errors the apps raise themselves (wallet, checks) are written for the reader
  return err instanceof Error && !('response' in err) ? err.message : 'unknown problem';
}

/** Applies a SMART style document (smart_style_url) to CSS variables. */
export async function applySmartStyle(url) {
  if (!url) return;
  try {
    const res = await fetch(url);
    if (!res.ok) return;
    const style = await res.json();
    const root = document.documentElement.style;
    if (style.color_background) root.setProperty('--bg', style.color_background);
    if (style.color_text) root.setProperty('--fg', style.color_text);
    if (style.color_highlight) root.setProperty('--accent', style.color_highlight);
    if (style.color_border) root.setProperty('--border', style.color_border);
    if (style.font_family_body) root.setProperty('font-family', style.font_family_body);
    if (style.dim_border_radius) root.setProperty('--radius', style.dim_border_radius);
    document.documentElement.dataset.smartStyle = 'applied';
  } catch {
    // The style is a courtesy: the app keeps its own readable defaults.
  }
}

/** A FHIR base URL in one spelling (no trailing slash), or undefined when it is not an absolute http(s) URL. */
function baseOf(value) {
  try {
    const url = new URL(value);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url.href.replace(/\/+$/, '') : undefined;
  } catch {
    return undefined;
  }
}

// fhirclient's authorize() takes these from the page's URL over the app's own options.
const FHIRCLIENT_URL_OVERRIDES = ['fhirServiceUrl', 'patientId', 'clientId'];

/**
 * Whether a launch page may follow its URL, for both apps. SMART App Launch
 * (app-launch.html#launch-app-ehr-launch): the app must check that `iss` is a server it trusts before
 * it sends the launch, and the user, anywhere. These apps work with the GlucoGuard that serves them
 * and nothing else, so `iss`, when given, must be its FHIR base; and the parameters fhirclient would
 * take from the URL instead of the app's options (another server, a patient id without a token, another
 * client) are refused. Not left to the page's CSP (connect-src), which only blocks the discovery request.
 */
export function trustedLaunch(config, params) {
  if (FHIRCLIENT_URL_OVERRIDES.some((name) => params.has(name))) return false;
  return !params.has('iss') || baseOf(params.get('iss')) === baseOf(config.fhirBase);
}

/** Loads /apps/config.json (client ids, FHIR base). */
export async function appConfig() {
  const res = await fetch('/apps/config.json');
  if (!res.ok) throw new Error('The app configuration could not be loaded');
  return res.json();
}
