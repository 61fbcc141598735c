// The patient portal (standalone launch as a patient): own AGP summary, upload with progress,
// grants (list, share in a few steps, stop sharing), the access log in plain words, key safety
// (with guardian recovery, recovery.js).
import { api, cancellableRequests, sessionSignal, apiSend, dataWords, el, endInstant, endWords, fmtDate, fmtDateTime, notice, problemOf, PURPOSE_WORDS, sessionEnded, show, statusOf, STATE_WORDS } from '../shared/dom.js';
import { forgetSession, signOutButton } from '../shared/session.js';
import { hasReadings, loadReport, periodSelector, renderReport } from '../shared/agp.js';
import { hasWallet, signWithWallet } from '../shared/wallet.js';
import { recoverySection } from './recovery.js';

const DAY = 86_400_000;
const $ = (id) => document.getElementById(id);
const statusLine = $('status');
let client;
let patientId;
let grantees = [];
/** False when the server listed only some of the clinicians (a long directory): the share step offers a name search. */
let granteesComplete = true;
let period = 14;
let keyInfo;

function say(text) {
  statusLine.textContent = text;
}

function nameOf(p) {
  const n = p?.name?.[0];
  return n ? (n.text ?? [n.given, n.family].flat().filter(Boolean).join(' ')) : undefined;
}

let ended = false;

/**
 * The sign-in is over (the token expired, was revoked, or the user was disabled): every request now
 * answers 401. The page says so once, in place of sections that would each say "could not be
 * loaded", forgets what is left of the session and offers to sign in again.
 */
function endSession() {
  if (ended) return;
  ended = true;
  forgetSession();
  $('who').textContent = '';
  show($('session'));
  show($('main'), notice('error', 'Your sign-in has ended.',
    'It expired or was ended, so GlucoGuard no longer shows your data in this window. Sign in again to go on.'),
  el('p', { 'data-session': 'ended' }, el('a', { class: 'button', href: 'launch.html' }, 'Sign in again')));
  $('main').focus();
}

/** Handles a failed request: true when it was the end of the session (then nothing else is to be said). */
function ifEnded(err) {
  if (!sessionEnded(err)) return false;
  endSession();
  return true;
}

// ---- My summary -------------------------------------------------------------------------------
async function loadSummary() {
  const body = $('summary-body');
  show(body, el('p', { role: 'status' }, 'Loading your summary…'));
  try {
    if (!(await hasReadings(client, patientId, period))) {
      show(body, notice('info', 'No glucose readings yet for this period.', 'Upload a file from your sensor or app below to see your summary.'));
      return;
    }
    const report = await loadReport(client, patientId, period);
    show(body, renderReport(report));
  } catch (err) {
    if (ifEnded(err)) return;
    if (statusOf(err) === 404) show(body, notice('info', 'No glucose readings yet for this period.', 'Upload a file from your sensor or app below to see your summary.'));
    else show(body, notice('error', 'Your summary could not be loaded.', 'Please try again in a moment.'));
  }
}

// ---- Upload -----------------------------------------------------------------------------------
const FORMATS = [
  ['', 'Detect automatically'], ['dexcom-clarity', 'Dexcom Clarity export (CSV)'], ['dexcom', 'Dexcom API (JSON)'], ['libreview', 'FreeStyle LibreView (CSV)'],
  ['nightscout', 'Nightscout (JSON)'], ['tidepool', 'Tidepool (JSON)'], ['healthkit', 'Apple Health export (XML)'], ['openmhealth', 'Open mHealth (JSON)'],
];

function uploadForm() {
  const progress = el('progress', { id: 'upload-progress', max: 100, value: 0, 'aria-describedby': 'upload-progress-text' });
  const progressText = el('p', { id: 'upload-progress-text', 'aria-live': 'polite' }, '');
  const result = el('div', { id: 'upload-result', 'aria-live': 'polite' });
  const progressBox = el('div', { hidden: true }, el('label', { for: 'upload-progress' }, 'Upload progress'), progress, progressText);
  const form = el('form', { id: 'upload-form', novalidate: true },
    el('p', {}, el('label', { for: 'upload-file' }, 'Export file'), el('br'),
      el('input', { type: 'file', id: 'upload-file', name: 'file', required: true, 'aria-describedby': 'upload-help',
        accept: '.json,.csv,.xml,.txt,application/json,text/csv,text/xml' })),
    el('p', { id: 'upload-help' }, 'The file you exported from Dexcom Clarity, LibreView, Nightscout, Tidepool or Apple Health. Nothing is stored if the file has errors.'),
    el('p', {}, el('label', { for: 'upload-format' }, 'File type'), el('br'),
      el('select', { id: 'upload-format', name: 'format' }, FORMATS.map(([v, t]) => el('option', { value: v }, t)))),
    el('p', {}, el('label', { for: 'upload-tz' }, 'Time zone of the times in the file'), el('br'),
      el('select', { id: 'upload-tz', name: 'tz', 'aria-describedby': 'upload-tz-help' },
        el('option', { value: '' }, 'The server\'s default time zone'),
        timeZones().map((z) => el('option', { value: z, ...(z === browserTimeZone() ? { selected: true } : {}) }, z)))),
    el('p', { id: 'upload-tz-help' }, 'LibreView and Dexcom Clarity exports give times without a time zone: they are read in this one, where you wore the sensor. It starts at this device\'s time zone.'),
    el('p', { id: 'upload-check-help' }, 'Check the file first to see what it holds and what would be stored, with its times read in the zone above; nothing is stored until you upload.'),
    el('button', { type: 'button', id: 'upload-check', 'aria-describedby': 'upload-check-help' }, 'Check the file'), ' ',
    el('button', { type: 'submit' }, 'Upload'),
    el('p', { id: 'upload-remove-help' }, 'Uploaded a file with the wrong time zone? Choose the file and the zone it was uploaded with and remove its readings (you confirm first), then upload it again with the right zone.'),
    el('button', { type: 'button', id: 'upload-remove', 'aria-describedby': 'upload-remove-help' }, 'Remove this file\'s readings…'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    send(chosen());
  });
  form.querySelector('#upload-check').addEventListener('click', () => send(chosen(), { dryRun: true }));
  // a removal is checked first: what it would remove, and a button to confirm it with the same file and options
  form.querySelector('#upload-remove').addEventListener('click', () => send(chosen(), { dryRun: true, remove: true }));

  /** The file and options in the form, or undefined (and a notice) when no file is chosen. */
  function chosen() {
    const file = $('upload-file').files?.[0];
    if (!file) {
      show(result, notice('error', 'Choose a file first.'));
      $('upload-file').focus();
      return undefined;
    }
    return { file, format: $('upload-format').value, tz: $('upload-tz').value };
  }

  /**
   * Sends a file to /cgm/ingest: to store it; with `remove`, to remove its readings; with `dryRun`,
   * to hear what either would do.
   */
  function send(what, { dryRun = false, remove = false } = {}) {
    if (!what) return;
    const { file, format, tz } = what;
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/cgm/ingest?patient=${encodeURIComponent(patientId)}${format ? `&format=${encodeURIComponent(format)}` : ''}${tz ? `&tz=${encodeURIComponent(tz)}` : ''}${remove ? '&remove=true' : ''}${dryRun ? '&dryRun=true' : ''}`);
    const token = client.state.tokenResponse?.access_token;
    if (!token) return endSession();
    xhr.setRequestHeader('Authorization', `Bearer ${token}`);
    // signing out stops sending an upload under way (an export the server did not receive whole is not imported)
    sessionSignal(client)?.addEventListener('abort', () => xhr.abort(), { once: true });
    xhr.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
    progressBox.hidden = false;
    progress.value = 0;
    progressText.textContent = 'Starting the upload…';
    show(result);
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      const pct = Math.round((e.loaded / e.total) * 100);
      progress.value = pct;
      progressText.textContent = `${pct} % sent (${Math.round(e.loaded / 1024)} of ${Math.round(e.total / 1024)} KB)`;
    };
    xhr.upload.onload = () => {
      progress.value = 100;
      progressText.textContent = '100 % sent. Reading your file…';
    };
    // A failed upload leaves no "Reading your file…" behind, as if it were still being read.
    const failed = () => { progressBox.hidden = true; };
    xhr.onerror = () => {
      failed();
      show(result, notice('error', 'The upload failed.', 'Check your connection and try again.'));
    };
    xhr.onload = () => {
      let body;
      try { body = JSON.parse(xhr.responseText); } catch { body = undefined; }
      if (xhr.status === 200 && body) {
        progressText.textContent = '100 % sent. Done.';
        show(result, body.remove ? removalSummary(body, () => send(what, { remove: true })) : importSummary(body));
        if (!body.dryRun) void loadSummary();
      } else if (xhr.status === 401) {
        endSession();
      } else {
        failed();
        const why = body?.issue?.map((i) => i.diagnostics).filter(Boolean).slice(0, 5) ?? [];
        const title = remove ? (dryRun ? 'This file\'s readings could not be checked for removal.' : 'Nothing was removed.') : dryRun ? 'This file would not be imported.' : 'Nothing was imported.';
        show(result, notice('error', title, ...(why.length ? why : [`The server answered ${xhr.status}.`])));
      }
    };
    xhr.send(file);
  }
  return [form, progressBox, result];
}

/** This device's IANA time zone ('' when the browser does not say). */
function browserTimeZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone ?? '';
}

/** The IANA time zones the browser knows, with UTC and this device's should they be missing from them. */
function timeZones() {
  const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
  const own = browserTimeZone();
  return [...new Set([...(own ? [own] : []), ...zones, 'UTC'])];
}

/** What an import did, or (a dry run) would do. */
function importSummary(r) {
  const lines = [
    ...fileLines(r),
    r.dryRun ? `${r.created} new readings would be stored, ${r.unchanged} are already there, ${r.corrected} would be corrected.`
      : `${r.created} new readings stored, ${r.unchanged} already there, ${r.corrected} corrected.`,
    spanLine(r),
    r.skipped ? `${r.skipped} records skipped (for example sensor errors or non-glucose records).` : undefined,
    r.rejected ? `${r.rejected} records rejected.` : undefined,
    ...(r.warnings ?? []),
  ].filter(Boolean);
  const list = el('ul', { 'data-import': JSON.stringify({ created: r.created, unchanged: r.unchanged, dryRun: r.dryRun === true }) }, lines.map((l) => el('li', {}, l)));
  return r.dryRun ? notice('info', 'Checked: nothing is stored yet. Uploading this file would do this:', list) : notice('ok', 'Import finished.', list);
}

/** The file's type and the zone its times without one were read in, as an import report says them. */
function fileLines(r) {
  return [`File type: ${r.format}${r.detected ? ' (detected automatically)' : ''}.`, r.timeZone ? `Times without a time zone were read in ${r.timeZone.zone}.` : undefined];
}

/**
 * The first and last reading, in this device's time, saying so: a file read in the wrong zone shows
 * here as readings at hours the sensor was not worn (the times in the file are the sensor's).
 */
function spanLine(r) {
  return r.first ? `Readings from ${fmtDateTime(r.first)} to ${fmtDateTime(r.last)} (this device's time${browserTimeZone() ? `, ${browserTimeZone()}` : ''}).` : undefined;
}

/** What a removal did, or (a dry run) would do, with the button that confirms it. */
function removalSummary(r, confirm) {
  const lines = [
    ...fileLines(r),
    r.dryRun ? `${r.removed} readings of this file are stored and would be removed.` : `${r.removed} readings removed.`,
    r.changedSince ? `${r.changedSince} readings changed since they were uploaded: they are kept.` : undefined,
    r.notStored ? `${r.notStored} readings of this file are not stored${r.dryRun ? '' : ' (any more)'}.` : undefined,
    spanLine(r),
  ].filter(Boolean);
  const list = el('ul', { 'data-remove': JSON.stringify({ removed: r.removed, dryRun: r.dryRun === true }) }, lines.map((l) => el('li', {}, l)));
  if (!r.dryRun) return notice('ok', 'Readings removed.', list);
  if (!r.removed) return notice('info', 'There is nothing of this file to remove.', list);
  const button = el('button', { type: 'button', id: 'upload-remove-confirm' }, `Remove ${r.removed} readings`);
  button.addEventListener('click', () => { button.disabled = true; confirm(); });
  return notice('warn', 'Checked: nothing is removed yet. Removing this file\'s readings would do this:', list, button);
}

// ---- Grants -----------------------------------------------------------------------------------
function granteeName(reference) {
  return grantees.find((g) => g.reference === reference)?.name ?? reference;
}

function stateOf(c) {
  const p = c.provision ?? {};
  const start = Date.parse(p.period?.start ?? '');
  const end = endInstant(p.period?.end ?? ''); // a date-only end lasts the whole of that day
  if (c.status === 'inactive' || c.status === 'rejected') return 'revoked';
  if (c.status !== 'active') return 'pending';
  if (end <= Date.now()) return 'expired';
  if (start > Date.now()) return 'not-started';
  return 'active';
}

function capitalised(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

const STATE_MARK = { active: '✔', pending: '…', 'not-started': '…', expired: '–', revoked: '✕' };

async function loadGrants() {
  const body = $('sharing-body');
  let consents;
  try {
    consents = await client.request({ url: `Consent?patient=Patient/${patientId}&_count=100` }, { pageLimit: 0, flat: true });
  } catch (err) {
    if (ifEnded(err)) return;
    show(body, notice('error', 'Your list of permissions could not be loaded.'));
    return;
  }
  consents = consents.filter((c) => c?.resourceType === 'Consent')
    .sort((a, b) => (b.meta?.lastUpdated ?? '').localeCompare(a.meta?.lastUpdated ?? ''));
  if (consents.length === 0) {
    show(body, el('p', { 'data-grants': 0 }, 'You have not shared your data with anyone.'));
    return;
  }
  const rows = consents.map((c) => {
    const p = c.provision ?? {};
    const actor = p.actor?.[0]?.reference?.reference ?? '';
    const state = stateOf(c);
    const classes = (p.class ?? []).map((x) => x.code);
    const action = state === 'active' || state === 'not-started'
      ? el('button', { type: 'button', class: 'danger', 'data-revoke': c.id, 'aria-label': `Stop sharing with ${granteeName(actor)}`, onclick: () => void revoke(c, actor) }, 'Stop sharing')
      : '';
    return el('tr', { 'data-consent': c.id, 'data-state': state },
      el('th', { scope: 'row' }, granteeName(actor)),
      el('td', {}, dataWords(classes)),
      el('td', {}, `${fmtDate(p.dataPeriod?.start)} – ${fmtDate(p.dataPeriod?.end)}`),
      el('td', { 'data-until': '' }, capitalised(endWords(p.period?.end))),
      el('td', {}, (p.purpose ?? []).map((x) => PURPOSE_WORDS[x.code] ?? x.code).join(', ')),
      el('td', { class: 'status' }, `${STATE_MARK[state]} ${STATE_WORDS[state]}`),
      el('td', {}, action));
  });
  // Data tables may scroll sideways inside their box at 200 % zoom (WCAG 1.4.10 exception); the page does not.
  show(body, el('div', { class: 'table-scroll', tabindex: 0, role: 'region', 'aria-label': 'Your permissions' }, el('table', { 'data-grants': consents.length },
    el('caption', { class: 'visually-hidden' }, 'Everyone you have shared your data with'),
    el('thead', {}, el('tr', {}, ['Who', 'What data', 'Data from – to', 'Until', 'Why', 'Status', ''].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows))));
}

async function revoke(consent, actor) {
  say(`Stopping sharing with ${granteeName(actor)}…`);
  try {
    const res = await client.request({ url: `Consent/${consent.id}`, method: 'DELETE' });
    if (res?.resourceType === 'Parameters') await walletConfirm(res, `Stopping sharing with ${granteeName(actor)}`);
    say(`You stopped sharing with ${granteeName(actor)}. They can no longer see your data.`);
  } catch (err) {
    if (ifEnded(err)) return;
    say(`Sharing could not be stopped: ${problemOf(err)}`);
  }
  await loadGrants();
}

// ---- Share wizard -----------------------------------------------------------------------------
/**
 * With a long directory the server lists only the first clinicians it comes to: a search by name
 * finds the others and puts them in the list.
 */
function granteeFinder(select, options) {
  const input = el('input', { type: 'search', id: 'share-find', autocomplete: 'off', 'aria-describedby': 'share-find-help' });
  const result = el('p', { id: 'share-find-result', 'aria-live': 'polite' });
  const find = async () => {
    const name = input.value.trim();
    if (!name) {
      result.textContent = 'Type part of a name first.';
      input.focus();
      return;
    }
    result.textContent = 'Searching…';
    try {
      const found = await api(client, `/apps/api/grantees?name=${encodeURIComponent(name)}`);
      const known = new Set(grantees.map((g) => g.reference));
      grantees.push(...found.grantees.filter((g) => !known.has(g.reference)));
      if (found.grantees.length === 0) {
        result.textContent = `Nobody registered with GlucoGuard is called "${name}".`;
        return;
      }
      show(select, options(found.grantees));
      result.textContent = `${found.grantees.length} found${found.complete ? '' : ' (the first ones: type more of the name to narrow it)'}. Choose below.`;
      select.focus();
    } catch (err) {
      if (ifEnded(err)) return;
      result.textContent = 'The search did not work. Please try again.';
    }
  };
  input.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter') return;
    event.preventDefault(); // not the share form's submit
    void find();
  });
  return el('div', { class: 'finder' },
    el('p', { id: 'share-find-help' }, 'Only the first clinicians and organizations are listed. Search by name to find others.'),
    el('p', {}, el('label', { for: 'share-find' }, 'Find by name'), el('br'), input, ' ',
      el('button', { type: 'button', class: 'secondary', id: 'share-find-button', onclick: () => void find() }, 'Find')),
    result);
}

const DATA_CHOICES = [
  { id: 'glucose', label: 'My glucose data (sensor readings, summaries, devices) and my name and date of birth', classes: ['Patient', 'Observation', 'Device'] },
  { id: 'all', label: 'Everything in my record', classes: [] },
];
const PERIOD_CHOICES = [
  { id: '14', label: 'The last 14 days', days: 14 }, { id: '90', label: 'The last 90 days', days: 90 },
  { id: '365', label: 'The last year', days: 365 }, { id: 'all', label: 'All my data', days: undefined },
];
const DURATION_CHOICES = [
  { id: '1', label: '1 day', days: 1 }, { id: '7', label: '1 week', days: 7 }, { id: '30', label: '30 days', days: 30 },
  { id: '90', label: '3 months', days: 90 }, { id: '365', label: '1 year', days: 365 },
];
const WHY_CHOICES = [
  { id: 'TREAT', label: 'For my treatment' }, { id: 'CAREMGT', label: 'To manage my care' }, { id: 'COC', label: 'To continue my care with another provider' },
];

function radios(name, legend, choices, checked) {
  return el('fieldset', { 'data-step': name },
    el('legend', { tabindex: -1 }, legend),
    choices.map((c) => el('div', { class: 'choice' },
      el('input', { type: 'radio', name, id: `${name}-${c.id}`, value: c.id, checked: c.id === checked }),
      el('label', { for: `${name}-${c.id}` }, c.label))));
}

function shareWizard() {
  const box = $('share-body');
  if (grantees.length === 0 && granteesComplete) {
    show(box, notice('info', 'There is nobody to share with yet.', 'Your clinic must register its clinicians (and your relatives, for a relative) with GlucoGuard before you can share with them.'));
    return;
  }
  const options = (list) => list.map((g) => el('option', { value: g.reference }, `${g.name} (${g.kind})`));
  const select = el('select', { id: 'share-who', name: 'who' }, options(grantees));
  const steps = [
    el('fieldset', { 'data-step': 'who' }, el('legend', { tabindex: -1 }, '1. Who should see your data?'),
      granteesComplete ? null : granteeFinder(select, options),
      el('label', { for: 'share-who' }, 'Clinician, organization or relative'), el('br'), select),
    radios('what', '2. What data?', DATA_CHOICES, 'glucose'),
    radios('dataperiod', '3. Which of your data?', PERIOD_CHOICES, '14'),
    radios('duration', '4. For how long?', DURATION_CHOICES, '7'),
    radios('why', '5. Why?', WHY_CHOICES, 'TREAT'),
    el('fieldset', { 'data-step': 'confirm' }, el('legend', { tabindex: -1 }, '6. Check and confirm'), el('p', { id: 'share-sentence', 'data-confirm': '' })),
  ];
  const names = ['Who', 'What', 'Which data', 'How long', 'Why', 'Confirm'];
  const progress = el('ol', { class: 'steps', 'aria-label': 'Steps' }, names.map((n) => el('li', {}, n)));
  let at = 0;
  const back = el('button', { type: 'button', class: 'secondary', onclick: () => go(at - 1) }, 'Back');
  const next = el('button', { type: 'button', onclick: () => go(at + 1) }, 'Next');
  const submit = el('button', { type: 'submit' }, 'Share my data');
  const form = el('form', { id: 'share-form' }, progress, steps, el('p', {}, back, ' ', next, submit));
  const value = (name) => form.querySelector(`[name="${name}"]:checked`)?.value ?? form.querySelector(`[name="${name}"]`)?.value;
  function terms() {
    const now = Date.now();
    const data = DATA_CHOICES.find((c) => c.id === value('what'));
    const dp = PERIOD_CHOICES.find((c) => c.id === value('dataperiod'));
    const dur = DURATION_CHOICES.find((c) => c.id === value('duration'));
    const accessTo = now + dur.days * DAY;
    return {
      actor: value('who'), data, purpose: value('why'),
      dataFrom: dp.days ? now - dp.days * DAY : Date.UTC(2000, 0, 1), dataLabel: dp.label.toLowerCase(),
      accessFrom: now - 60_000, accessTo, duration: dur.label,
    };
  }
  function go(i) {
    at = Math.max(0, Math.min(steps.length - 1, i));
    steps.forEach((s, k) => { s.hidden = k !== at; });
    [...progress.children].forEach((li, k) => (k === at ? li.setAttribute('aria-current', 'step') : li.removeAttribute('aria-current')));
    back.disabled = at === 0;
    next.hidden = at === steps.length - 1;
    submit.hidden = at !== steps.length - 1;
    if (at === steps.length - 1) {
      const t = terms();
      $('share-sentence').textContent = `${granteeName(t.actor)} will be able to see ${t.data.id === 'all' ? 'everything in your record' : 'your glucose data and your name and date of birth'}`
        + ` — ${t.dataLabel}, and anything new you add while sharing — until ${fmtDateTime(new Date(t.accessTo).toISOString())} (${t.duration}),`
        + ` for ${PURPOSE_WORDS[t.purpose]}. Every look is written in your access log. You can stop sharing at any time.`;
    }
    steps[at].querySelector('legend').focus();
  }
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    // Enter in a step submits the form (implicit submission): it moves on, and only the last step's
    // "Share my data", after the patient has seen what they agree to, shares.
    if (at !== steps.length - 1) return go(at + 1);
    const t = terms();
    submit.disabled = true;
    say('Sharing…');
    try {
      const res = await client.request({
        url: 'Consent', method: 'POST', headers: { 'Content-Type': 'application/fhir+json' },
        body: JSON.stringify(consentOf(t)),
      });
      if (res?.resourceType === 'Parameters') await walletConfirm(res, `Sharing with ${granteeName(t.actor)}`);
      say(`Done: ${granteeName(t.actor)} can now see your data until ${fmtDateTime(new Date(t.accessTo).toISOString())}.`);
      await Promise.all([loadGrants(), loadKeys()]);
      go(0);
    } catch (err) {
      if (ifEnded(err)) return;
      say(`Your data was not shared: ${problemOf(err)}`);
    } finally {
      submit.disabled = false;
    }
  });
  show(box, form);
  steps.forEach((s, k) => { s.hidden = k !== 0; });
  progress.children[0].setAttribute('aria-current', 'step');
  back.disabled = true;
  submit.hidden = true;
}

/**
 * A patient with their own wallet: the server answered with the typed data to sign. The wallet
 * signs it (eth_signTypedData_v4) and the signature goes back through Consent/ID/$sign; the
 * permission is recorded on chain only then. Throws (in words) when there is no wallet or it refuses.
 */
async function walletConfirm(params, what) {
  const typedData = JSON.parse(params.parameter.find((p) => p.name === 'typedData').valueString);
  const signUrl = params.parameter.find((p) => p.name === 'sign').valueString;
  if (!hasWallet()) {
    throw new Error('it needs your wallet\'s signature, and no wallet was found in this browser. Open the portal in the browser where your wallet is installed.');
  }
  say(`${what}: please confirm in your wallet…`);
  let signature;
  try {
    signature = await signWithWallet(typedData, keyInfo?.key?.address);
  } catch (err) {
    throw new Error(`your wallet did not sign (${err?.message ?? 'refused'}). Nothing was changed.`);
  }
  await client.request({
    url: signUrl, method: 'POST', headers: { 'Content-Type': 'application/fhir+json' },
    body: JSON.stringify({ resourceType: 'Parameters', parameter: [{ name: 'signature', valueString: signature }] }),
  });
}

function consentOf(t) {
  return {
    resourceType: 'Consent',
    status: 'active',
    scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
    category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
    patient: { reference: `Patient/${patientId}` },
    dateTime: new Date().toISOString(),
    performer: [{ reference: `Patient/${patientId}` }],
    policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] },
    provision: {
      type: 'permit',
      period: { start: new Date(t.accessFrom).toISOString(), end: new Date(t.accessTo).toISOString() },
      actor: [{ role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { reference: t.actor } }],
      action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'access' }] }],
      purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: t.purpose }],
      ...(t.data.classes.length ? { class: t.data.classes.map((code) => ({ system: 'http://hl7.org/fhir/resource-types', code })) } : {}),
      dataPeriod: { start: new Date(t.dataFrom).toISOString(), end: new Date(t.accessTo).toISOString() },
    },
  };
}

// ---- Access log -------------------------------------------------------------------------------
const VERB = { read: 'opened', vread: 'opened an older version of', 'search-type': 'searched', operation: 'ran a report on', history: 'looked at the history of' };

function whatWords(e) {
  const query = e.entity?.find((x) => x.query)?.query;
  let text = e.entity?.find((x) => x.what?.reference)?.what?.reference ?? '';
  if (query) {
    // base64 of the request's query (BALP); an entry that is not base64 must not take the whole log down
    try { text = atob(query); } catch { /* keep the reference */ }
  }
  if (/\$cgm-summary/.test(text)) return 'your glucose summary';
  if (/\$cgm-agp/.test(text)) return 'your glucose profile (AGP)';
  if (/^Observation/.test(text)) return 'your glucose readings';
  if (/^Patient/.test(text)) return 'your name and details';
  if (/^Consent/.test(text)) return 'your sharing permissions';
  if (/^AuditEvent/.test(text)) return 'your access log';
  return text.split('?')[0] || 'your record';
}

async function loadLog() {
  const body = $('log-body');
  let events;
  try {
    events = await client.request({ url: `AuditEvent?patient=Patient/${patientId}&_sort=-date&_count=200` }, { pageLimit: 1, flat: true });
  } catch (err) {
    if (ifEnded(err)) return;
    show(body, notice('error', 'Your access log could not be loaded.'));
    return;
  }
  const mine = `Patient/${patientId}`;
  const others = events.filter((e) => e?.resourceType === 'AuditEvent' && !e.agent?.some((a) => a.requestor && a.who?.reference === mine));
  // One line per person, action and minute: opening a report makes several reads at once.
  const groups = [];
  for (const e of others) {
    const who = e.agent?.find((a) => a.requestor)?.who?.reference ?? '';
    const key = [who, e.subtype?.[0]?.code, whatWords(e), e.outcome, e.outcomeDesc ?? '', (e.recorded ?? '').slice(0, 16)].join('|');
    const last = groups.at(-1);
    if (last?.key === key) last.count++;
    else groups.push({ key, event: e, count: 1 });
  }
  const items = groups.map(({ event: e, count }) => {
    const who = e.agent?.find((a) => a.requestor)?.who;
    const name = who?.reference ? granteeName(who.reference) : (who?.display ?? 'An application');
    const interaction = e.subtype?.[0]?.code ?? 'read';
    const allowed = e.outcome === '0';
    const byGrant = e.entity?.some((x) => x.what?.identifier?.system === 'urn:glucoguard:consent-grant');
    const withheld = e.outcomeDesc && allowed ? ` (${e.outcomeDesc})` : '';
    const outcome = allowed
      ? (byGrant ? 'Allowed by your permission' : 'Allowed, but nothing of yours was shown') + withheld
      : 'Refused: they had no permission';
    return el('li', { 'data-audit-who': who?.reference ?? '', 'data-audit-outcome': allowed ? 'allowed' : 'refused' },
      el('strong', {}, fmtDateTime(e.recorded)), ` — ${name} ${VERB[interaction] ?? 'looked at'} ${whatWords(e)}${count > 1 ? ` (${count} times)` : ''}. `,
      el('span', { class: 'status' }, `${allowed ? '✔' : '✕'} ${outcome}.`));
  });
  show(body, items.length
    ? el('ul', { class: 'log', 'data-log': items.length }, items)
    : el('p', { 'data-log': 0 }, 'Nobody else has looked at your data.'),
  el('p', {}, el('button', { type: 'button', class: 'secondary', onclick: () => void loadLog() }, 'Refresh the log')));
}

// ---- Key safety -------------------------------------------------------------------------------
function shortAddress(a) {
  return `${a.slice(0, 6)}…${a.slice(-4)}`;
}

function guardianName(g) {
  return g.name ?? (g.reference ? granteeName(g.reference) : `wallet ${shortAddress(g.address)}`);
}

function protectionWords(info) {
  if (!info.key) return el('p', { 'data-protection': 'none' }, 'You do not have a signing key yet. One is made for you the first time you share your data.');
  if (info.protection === 'wallet') {
    return el('p', { 'data-protection': 'wallet' }, `Your permissions are signed with your own wallet (account ${shortAddress(info.key.address)}). `
      + 'Keep its recovery phrase safe: GlucoGuard never sees it and cannot recover it.');
  }
  if (info.protection === 'login') {
    return el('p', { 'data-protection': 'login' }, 'GlucoGuard keeps a signing key for you, locked with your password. '
      + 'It can only be used while you are signed in, to share or stop sharing as you ask.');
  }
  return el('p', { 'data-protection': 'server' }, 'GlucoGuard keeps a signing key for you on its server. '
    + 'The next time you sign in it will be locked with your password.');
}

function backupWords(info) {
  const b = info.backup;
  const names = info.recovery.guardians.map(guardianName);
  const items = [];
  if (info.protection !== 'wallet') {
    items.push(el('li', { 'data-backup-item': 'code' }, b.recoveryCodeCreated
      ? `✔ Recovery code: made on ${fmtDate(b.recoveryCodeCreated)}. With it you can open your key again if you forget your password.`
      : '✕ Recovery code: none yet. If you forget your password, you would need your guardians.'));
  }
  items.push(el('li', { 'data-backup-item': 'guardians' }, b.threshold > 0
    ? `✔ Guardians: ${names.join(', ')}. ${b.threshold} of them must agree to give you a new key if yours is lost.`
    : '✕ Guardians: none yet.'));
  const summary = info.protection === 'wallet'
    ? el('p', { 'data-backup': b.threshold > 0 ? 'guardians' : 'wallet' }, el('strong', {}, b.threshold > 0
      ? 'Your wallet\'s recovery phrase is its backup, and your guardians can replace a lost wallet.'
      : 'Your wallet\'s recovery phrase is its only backup.'))
    : el('p', { 'data-backup': b.backedUp ? 'yes' : 'no' }, el('strong', {}, b.backedUp
      ? '✔ Your key is backed up.'
      : '✕ Your key is not backed up yet. Make a recovery code or choose guardians below.'));
  return [summary, el('ul', { class: 'backup' }, items)];
}

function codeNotice(code) {
  return notice('warn', 'Write this recovery code down now and keep it somewhere safe.',
    'It is shown only this once. Anyone with it and access to your account could use your key; GlucoGuard does not keep a copy.',
    el('p', { class: 'code', id: 'recovery-code', tabindex: -1, 'data-recovery-code': code }, code));
}

/** The "make a recovery code" button; `code` is a code just made, shown once. */
function recoveryCodeBox(code) {
  const box = el('div', { id: 'recovery-code-box', 'aria-live': 'polite' }, code ? codeNotice(code) : null);
  const make = el('button', { type: 'button', class: 'secondary', id: 'make-recovery-code' },
    keyInfo.backup.recoveryCodeCreated ? 'Make a new recovery code' : 'Make a recovery code');
  make.addEventListener('click', async () => {
    make.disabled = true;
    try {
      const made = await apiSend(client, '/apps/api/key/recovery-code', 'POST');
      await loadKeys(true, made.code);
      $('recovery-code')?.focus();
    } catch (err) {
      if (ifEnded(err)) return;
      show(box, notice('error', 'The recovery code could not be made.', problemOf(err)));
      make.disabled = false;
    }
  });
  return [el('p', {}, make), box];
}

function unlockForm() {
  const result = el('div', { 'aria-live': 'polite' });
  const form = el('form', { id: 'unlock-form' },
    el('p', {}, el('label', { for: 'unlock-code' }, 'Recovery code'), el('br'),
      el('input', { type: 'text', id: 'unlock-code', name: 'code', autocomplete: 'off', spellcheck: 'false', required: true, size: 34, 'aria-describedby': 'unlock-help' })),
    el('p', { id: 'unlock-help' }, 'The code of 25 letters and digits you wrote down. Capitals and dashes do not matter.'),
    el('button', { type: 'submit' }, 'Open my key'), result);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      await apiSend(client, '/apps/api/key/recover-with-code', 'POST', { code: $('unlock-code').value });
      await loadKeys();
      // said once the key section shows the opened key, so what is announced is what is on screen
      say('Your key is open again and now locked with your current password.');
    } catch (err) {
      if (ifEnded(err)) return;
      show(result, notice('error', 'Your key could not be opened.', problemOf(err)));
      $('unlock-code').focus();
    }
  });
  return form;
}

function guardiansForm(info) {
  const current = new Set(info.recovery.guardians.map((g) => g.reference ?? g.address));
  const people = [
    ...(info.related ?? []).filter((r) => r.registered).map((r) => ({ reference: r.reference, label: `${r.name} (family or carer)` })),
    ...grantees.filter((g) => g.kind === 'clinician').map((g) => ({ reference: g.reference, label: `${g.name} (clinician)` })),
  ];
  const walletAddresses = info.recovery.guardians.filter((g) => !g.reference).map((g) => g.address);
  const result = el('div', { id: 'guardians-result', 'aria-live': 'polite' });
  const threshold = el('select', { id: 'guardian-threshold', name: 'threshold' });
  const fillThreshold = () => {
    const n = form.querySelectorAll('input[name="guardian"]:checked').length + (form.querySelector('#guardian-address').value.trim() ? 1 : 0);
    const keep = Number(threshold.value) || info.recovery.threshold || 1;
    show(threshold, (n === 0 ? [0] : Array.from({ length: n }, (_v, i) => i + 1))
      .map((k) => el('option', { value: k, selected: k === Math.min(keep, Math.max(n, 0)) }, k === 0 ? 'No guardians' : `${k} of ${n}`)));
  };
  const form = el('form', { id: 'guardians-form' },
    el('fieldset', {}, el('legend', {}, 'Who may help you get a new key?'),
      people.length
        ? people.map((p, i) => el('div', { class: 'choice' },
          el('input', { type: 'checkbox', name: 'guardian', id: `guardian-${i}`, value: p.reference, checked: current.has(p.reference), onchange: fillThreshold }),
          el('label', { for: `guardian-${i}` }, p.label)))
        : el('p', {}, 'Nobody from your record can be a guardian yet: your clinic registers family members and carers with GlucoGuard.'),
      el('p', {}, el('label', { for: 'guardian-address' }, 'Or a guardian\'s wallet address (optional)'), el('br'),
        el('input', { type: 'text', id: 'guardian-address', name: 'address', autocomplete: 'off', spellcheck: 'false', size: 44,
          value: walletAddresses[0] ?? '', 'aria-describedby': 'guardian-address-help', oninput: fillThreshold })),
      el('p', { id: 'guardian-address-help' }, 'Starts with 0x, 42 characters. Leave empty if you do not use one.')),
    el('p', {}, el('label', { for: 'guardian-threshold' }, 'How many guardians must agree'), el('br'), threshold),
    el('button', { type: 'submit' }, 'Save my guardians'), result);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const guardians = [...form.querySelectorAll('input[name="guardian"]:checked')].map((i) => i.value);
    const address = form.querySelector('#guardian-address').value.trim();
    if (address) guardians.push(address);
    say('Saving your guardians…');
    try {
      let res = await apiSend(client, '/apps/api/guardians', 'PUT', { guardians, threshold: Number(threshold.value) });
      if (res.state === 'awaiting-signature') {
        say('Saving your guardians: please confirm in your wallet…');
        const signature = await signWithWallet(res.typedData, info.key.address);
        res = await apiSend(client, '/apps/api/guardians/sign', 'POST', { signature });
      }
      await loadKeys();
      say(res.threshold > 0 ? `Your guardians are saved: ${res.threshold} of ${res.guardians.length} must agree.` : 'You have no guardians now.');
    } catch (err) {
      if (ifEnded(err)) return;
      show(result, notice('error', 'Your guardians were not saved.', problemOf(err)));
    }
  });
  fillThreshold();
  return form;
}

function passwordForm() {
  const result = el('div', { 'aria-live': 'polite' });
  const form = el('form', { id: 'password-form' },
    el('p', {}, el('label', { for: 'password-current' }, 'Current password'), el('br'),
      el('input', { type: 'password', id: 'password-current', name: 'current', autocomplete: 'current-password', required: true })),
    el('p', {}, el('label', { for: 'password-new' }, 'New password'), el('br'),
      el('input', { type: 'password', id: 'password-new', name: 'new', autocomplete: 'new-password', required: true, minlength: 8, 'aria-describedby': 'password-new-help' }),
      el('span', { id: 'password-new-help' }, ' At least 8 characters.')),
    el('p', {}, el('label', { for: 'password-repeat' }, 'New password again'), el('br'),
      el('input', { type: 'password', id: 'password-repeat', name: 'repeat', autocomplete: 'new-password', required: true, minlength: 8 })),
    el('button', { type: 'submit' }, 'Change my password'), result);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const [current, next, repeat] = ['password-current', 'password-new', 'password-repeat'].map((id) => form.querySelector(`#${id}`).value);
    if (next !== repeat) {
      show(result, notice('error', 'The two new passwords are not the same.'));
      form.querySelector('#password-repeat').focus();
      return;
    }
    try {
      await apiSend(client, '/apps/api/password', 'POST', { current, password: next });
      form.reset();
      show(result, notice('ok', 'Your password is changed.', 'Your signing key is now locked with the new password.',
        'Anywhere else you were signed in (another browser, tab or device) is signed out; this window stays signed in.'));
    } catch (err) {
      if (ifEnded(err)) return;
      show(result, notice('error', 'Your password was not changed.', problemOf(err)));
    }
  });
  return form;
}

/** Renders Key safety; `newCode` is a recovery code just made, `recovered` the key a guardian recovery just put in use. */
async function loadKeys(refreshInfo = true, newCode = undefined, recovered = undefined) {
  const body = $('keys-body');
  if (refreshInfo || !keyInfo) {
    try {
      keyInfo = await api(client, '/apps/api/key-safety');
    } catch (err) {
      if (ifEnded(err)) return;
      show(body, notice('error', 'Key information could not be loaded.'));
      return;
    }
  }
  const info = keyInfo;
  const related = info.related === null
    ? el('p', {}, 'GlucoGuard cannot list the people of your record on this server.')
    : info.related.length
      ? el('ul', {}, info.related.map((g) => el('li', {}, `${g.name} can share and stop sharing your data on your behalf.`)))
      : el('p', {}, 'Nobody is recorded as acting on your behalf.');
  const parts = [el('h3', {}, 'Your signing key'), protectionWords(info)];
  if (info.locked) {
    parts.push(notice('error', 'Your key cannot be opened with your current password.',
      'This happens after a password reset. Enter your recovery code to open it again, or ask your guardians to help you get a new key'
      + (info.backup.threshold > 0 ? ' (see "Get a new key with your guardians" below).' : '.')), unlockForm());
  }
  if (info.key) {
    parts.push(el('h3', {}, 'Backup'), ...backupWords(info));
    if (info.protection !== 'wallet' && !info.locked) parts.push(...recoveryCodeBox(newCode));
    parts.push(el('h3', {}, 'Guardians for key recovery'),
      el('p', {}, 'Guardians are people you trust. If your key is ever lost, enough of them together can give you a new one. They cannot see your data or share it.'),
      guardiansForm(info));
    if (recovered || (info.key.custodial && info.recovery.threshold > 0)) {
      parts.push(await recoverySection({ client, info, nameOf: guardianName, say, recovered, reload: recoveredTo }));
    }
  }
  parts.push(el('h3', {}, 'People who can act for you'), related);
  parts.push(el('h3', {}, 'Your password'), passwordForm());
  show(body, parts);
}

/** After a guardian recovery: Key safety shows the new key, and focus moves to the confirmation. */
async function recoveredTo(address) {
  await loadKeys(true, undefined, address);
  say('Your new key is in use.');
  $('recovery-done')?.focus();
}

// ---- Start ------------------------------------------------------------------------------------
try {
  client = cancellableRequests(await window.FHIR.oauth2.ready());
  patientId = client.patient.id;
} catch {
  // Back from the sign-in with an error (the patient said no, or the sign-in expired): said in words,
  // never the error text the URL carries.
  const oauthError = new URLSearchParams(window.location.search).get('error');
  if (oauthError) forgetSession();
  show($('main'), el('h2', { 'data-signed-out': '', ...(oauthError ? { 'data-oauth-error': oauthError === 'access_denied' ? 'access_denied' : 'other' } : {}) }, 'Please sign in'),
    el('p', {}, oauthError === 'access_denied'
      ? 'You did not allow the portal to open your record, so nothing is shown. Sign in again when you want to see your glucose data.'
      : oauthError ? 'The sign-in did not finish (it may have taken too long). Please sign in again.'
        : 'Sign in to see your glucose data and who you share it with.'),
    el('p', {}, el('a', { class: 'button', href: 'launch.html' }, 'Sign in')));
}
if (client) {
  show($('session'), signOutButton(client, 'signed-out.html'));
  try {
    const me = await client.request({ url: `Patient/${patientId}` });
    $('who').textContent = `Signed in as ${nameOf(me) ?? 'you'}`;
  } catch (err) {
    if (!ifEnded(err)) $('who').textContent = 'Signed in';
  }
  try {
    ({ grantees, complete: granteesComplete = true } = await api(client, '/apps/api/grantees'));
  } catch (err) {
    ifEnded(err);
    grantees = [];
  }
  try {
    keyInfo = await api(client, '/apps/api/key-safety');
  } catch (err) {
    ifEnded(err);
    keyInfo = undefined;
  }
}
if (client && !ended) {
  show($('summary-controls'), periodSelector(period, (d) => { period = d; void loadSummary(); }));
  show($('upload-body'), uploadForm());
  shareWizard();
  await Promise.all([loadSummary(), loadGrants(), loadLog(), loadKeys()]);
}

