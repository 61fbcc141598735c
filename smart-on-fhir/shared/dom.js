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

export function fmtDate(iso) {
  return iso ? dateFmt.format(new Date(iso)) : '';
}

export function fmtDateTime(iso) {
  return iso ? dateTimeFmt.format(new Date(iso)) : '';
}

export const PURPOSE_WORDS = {
  TREAT: 'your treatment', ETREAT: 'emergency treatment', CAREMGT: 'managing your care', COC: 'continuity of your care',
  HRESCH: 'health research', PATRQT: 'your own request', FAMRQT: 'a family request', PWATRNY: 'your power of attorney',
  SUPNWK: 'your support network', HPAYMT: 'payment', HOPERAT: 'health care operations',
};

export const STATE_WORDS = {
  pending: 'Waiting to be recorded', active: 'Active', 'not-started': 'Not started yet', expired: 'Ended (expired)', revoked: 'Stopped (revoked)',
};

/** What a grant covers, in words, from its resource types. */
export function dataWords(classes) {
  if (!classes || classes.length === 0) return 'everything in your record';
  if (classes.includes('Observation')) return 'glucose readings and summaries';
  return classes.join(', ');
}

/** Calls the GlucoGuard web API with the app's access token. */
export async function api(client, path) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${client.state.tokenResponse.access_token}`, Accept: 'application/json' } });
  const body = await res.json().catch(() => undefined);
  if (!res.ok) {
    const err = new Error(body?.issue?.[0]?.diagnostics ?? `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

/** Sends JSON to the GlucoGuard web API (POST/PUT) with the app's access token. */
export async function apiSend(client, path, method, body) {
  const res = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${client.state.tokenResponse.access_token}`, Accept: 'application/json', 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await res.json().catch(() => undefined);
  if (!res.ok) {
    const err = new Error(answer?.issue?.[0]?.diagnostics ?? `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return answer;
}

/** HTTP status of an error thrown by fhirclient (or our api()). */
export function statusOf(err) {
  return err?.status ?? err?.statusCode ?? err?.response?.status;
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

/** Loads /apps/config.json (client ids, FHIR base). */
export async function appConfig() {
  const res = await fetch('/apps/config.json');
  if (!res.ok) throw new Error('The app configuration could not be loaded');
  return res.json();
}
