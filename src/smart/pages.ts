/**
 * Server-rendered pages of the authorization server: login, patient picker, approval and error.
 * Plain, accessible HTML (labels, headings, one main landmark) with inline styles and no external
 * assets. Every value is HTML-escaped.
 */
import type { Response } from 'express';
import type { PatientChoice } from './context.js';

export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const STYLE = `body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a;line-height:1.5}
label{display:block;margin-top:1rem;font-weight:600}input[type=text],input[type=password],input[type=search]{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}
button{margin-top:1rem;margin-right:.5rem;padding:.5rem 1.25rem;font-size:1rem}.error{color:#b00020;font-weight:600}
ul.scopes li{margin:.25rem 0}fieldset{border:1px solid #ccc;margin-top:1rem}`;

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} – GlucoGuard</title><style>${STYLE}</style></head>
<body><main><h1>${escapeHtml(title)}</h1>
${body}
</main></body></html>`;
}

/** Sends a page with headers that keep it out of caches and frames. */
export function sendPage(res: Response, status: number, html: string): void {
  res.status(status).set({
    'Content-Type': 'text/html; charset=utf-8',
    'Cache-Control': 'no-store',
    Pragma: 'no-cache',
    'X-Frame-Options': 'DENY',
    'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    'Referrer-Policy': 'no-referrer',
  }).send(html);
}

function hidden(name: string, value: string): string {
  return `<input type="hidden" name="${escapeHtml(name)}" value="${escapeHtml(value)}">`;
}

function alert(message?: string): string {
  return message ? `<p class="error" role="alert">${escapeHtml(message)}</p>` : '';
}

export function loginPage(input: { requestId: string; clientName: string; error?: string; username?: string }): string {
  return page('Sign in', `<p>Sign in to let <strong>${escapeHtml(input.clientName)}</strong> connect to your records.</p>
${alert(input.error)}
<form method="post" action="login">
${hidden('request', input.requestId)}
<label for="username">Username</label>
<input type="text" id="username" name="username" autocomplete="username" required${input.username ? '' : ' autofocus'} value="${escapeHtml(input.username ?? '')}">
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required${input.username ? ' autofocus' : ''}>
<button type="submit">Sign in</button>
</form>`);
}

/**
 * How the picker lists a patient, and the approval page names the patient in context: name and
 * birth date with the FHIR id where the user may be shown them, else the id alone and why.
 */
export function patientLabel(p: PatientChoice): string {
  if (p.withheld) return `Patient ${p.id} (name not shared with you)`;
  const born = p.birthDate ? `, born ${p.birthDate}` : '';
  return p.name === undefined ? `Patient/${p.id}${born}` : `${p.name}${born} (Patient/${p.id})`;
}

/** `patients` undefined means no patient search is wired: the user types a patient ID. */
export function patientPickerPage(input: { requestId: string; clientName: string; patients?: PatientChoice[]; query: string; error?: string }): string {
  if (!input.patients) {
    return page('Choose a patient', `<p><strong>${escapeHtml(input.clientName)}</strong> asks for one patient's records. Enter the patient's ID.</p>
${alert(input.error)}
<form method="post" action="select-patient">
${hidden('request', input.requestId)}
<label for="patient">Patient ID</label>
<input type="text" id="patient" name="patient" required>
<button type="submit">Select patient</button>
</form>`);
  }
  const choices = input.patients.map((p, i) => `<div><input type="radio" id="p${i}" name="patient" value="${escapeHtml(p.id)}"${i === 0 ? ' required' : ''}>
<label for="p${i}" style="display:inline;font-weight:normal">${escapeHtml(patientLabel(p))}</label></div>`).join('\n');
  const list = input.patients.length
    ? `<form method="post" action="select-patient">${hidden('request', input.requestId)}
<fieldset><legend>Patients</legend>
${choices}
</fieldset>
<button type="submit">Select patient</button></form>`
    : `<p>No patients found.</p>`;
  return page('Choose a patient', `<p><strong>${escapeHtml(input.clientName)}</strong> asks for one patient's records. Choose the patient.</p>
${alert(input.error)}
<form method="post" action="select-patient">
${hidden('request', input.requestId)}
<label for="query">Search by name or patient ID</label>
<input type="search" id="query" name="query" value="${escapeHtml(input.query)}">
<button type="submit" name="action" value="search">Search</button>
</form>
${list}`);
}

/**
 * `user`: the username signed in with and the FHIR resource it stands for; `patient`: the patient in
 * context as patientLabel names them, or `ownRecords` when that patient is the user.
 */
export function approvalPage(input: { requestId: string; clientName: string; user: { username: string; fhirUser: string }; patient?: string; ownRecords?: boolean; scopes: string[] }): string {
  const items = input.scopes.map((s) => `<li>${escapeHtml(s)}</li>`).join('\n');
  return page('Allow access?', `<p><strong>${escapeHtml(input.clientName)}</strong> asks to act for you (signed in as <strong>${escapeHtml(input.user.username)}</strong>, ${escapeHtml(input.user.fhirUser)})${
    input.ownRecords ? ' on <strong>your own records</strong>' : input.patient ? ` on the records of <strong>${escapeHtml(input.patient)}</strong>` : ''}. It will be able to:</p>
<ul class="scopes">
${items}
</ul>
<form method="post" action="approve">
${hidden('request', input.requestId)}
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>`);
}

export function errorPage(title: string, message: string): string {
  return page(title, `<p class="error" role="alert">${escapeHtml(message)}</p>
<p>Return to the application and try again. If the problem persists, contact the application's support.</p>`);
}
