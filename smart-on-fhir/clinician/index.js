// The clinician's CGM viewer after an EHR launch: patient banner, who granted access until when,
// the AGP report for 14/30/90 days, and plain words when access ended or was never granted.
import { api, cancellableRequests, applySmartStyle, CLINICIAN_PURPOSE_WORDS, el, endWords, fmtDate, notice, sessionEnded, show, statusOf, dataWords } from '../shared/dom.js';
import { hasReadings, loadReport, periodSelector, renderReport } from '../shared/agp.js';
import { forgetSession, hasSession, signOutButton } from '../shared/session.js';

// Every read says why (the consent engine needs a purpose of use).
const PURPOSE = { 'X-Purpose-Of-Use': 'TREAT' };
const banner = document.getElementById('banner');
const accessBox = document.getElementById('access');
const controls = document.getElementById('controls');
const reportBox = document.getElementById('report');
let period = 14;
let client;
let bannerShown = false;

function nameOf(p) {
  const n = p?.name?.[0];
  return n ? (n.text ?? [n.prefix, n.given, n.family].flat().filter(Boolean).join(' ')) : undefined;
}

async function showBanner() {
  if (!client.state.tokenResponse?.need_patient_banner) return;
  let patient;
  try {
    patient = await client.request({ url: `Patient/${client.patient.id}`, headers: PURPOSE });
  } catch {
    // Not shared by the patient (404): show the id the EHR gave us, nothing more.
  }
  show(banner,
    el('span', {}, el('strong', { 'data-patient-name': '' }, nameOf(patient) ?? 'Patient')),
    patient?.birthDate ? el('span', {}, `Born ${fmtDate(patient.birthDate)}`) : null,
    patient?.gender ? el('span', {}, `Sex ${patient.gender}`) : null,
    el('span', {}, `Record ID ${client.patient.id}`));
  banner.hidden = false; // shown once filled: never an empty banner while the Patient read is in flight
}

/** The data a grant covers, in words for the clinician (a date-only bound as the calendar date it names). */
function dataPeriodWords(g) {
  return `from ${fmtDate(g.dataFromDate ?? g.dataFrom)} to ${fmtDate(g.dataToDate ?? g.dataTo)}`;
}

/**
 * The sign-in is over (token expired or revoked, user disabled): 401 on every request. Said once,
 * plainly, in place of "no access" (which would blame the patient's permission), with the ways back.
 */
function endSession() {
  forgetSession();
  show(document.getElementById('session'));
  show(controls);
  show(accessBox);
  show(reportBox, notice('error', 'Your session has ended.', 'Open the viewer again from the patient\'s record in your EHR, or sign in again and choose the patient.'),
    el('p', { 'data-session': 'ended' }, el('a', { class: 'button', href: 'launch.html' }, 'Sign in again')));
}

/** A grant's terms, in words: what data, which period, for what. */
function grantWords(g) {
  return `Covers ${dataWords(g.classes, "the patient's")} ${dataPeriodWords(g)}, for ${g.purposes.map((p) => CLINICIAN_PURPOSE_WORDS[p] ?? p).join(', ')}.`;
}

/**
 * Who granted access until when. Returns the active grants (a patient may have given this clinician
 * several, each with its own data period: every one is shown, since the report shows what any of
 * them allows), [] when none is active, or 'ended' when the session is over.
 */
async function showAccess() {
  let grants = [];
  try {
    grants = (await api(client, `/apps/api/access?patient=${encodeURIComponent(client.patient.id)}`)).grants;
  } catch (err) {
    if (sessionEnded(err)) return 'ended';
    show(accessBox, notice('warn', 'The access status could not be checked.'));
    return [];
  }
  const active = grants.filter((g) => g.state === 'active');
  if (active.length) {
    const logNote = 'Each time you open this report the patient can see it in their access log.';
    show(accessBox, active.length === 1
      ? notice('ok', `Access granted by ${active[0].grantedByName ?? 'the patient'} until ${endWords(active[0].accessToDate ?? active[0].accessTo)}.`,
        el('p', { 'data-access': 'active' }, `${grantWords(active[0])} ${logNote}`))
      : notice('ok', `Access granted by ${active[0].grantedByName ?? 'the patient'} in ${active.length} permissions.`,
        el('ul', {}, active.map((g) => el('li', { 'data-access': 'active' }, `Until ${endWords(g.accessToDate ?? g.accessTo)}: ${grantWords(g)}`))),
        el('p', {}, logNote)));
    return active;
  }
  const ended = grants.find((g) => g.state === 'revoked' || g.state === 'expired');
  if (ended) {
    const how = ended.state === 'revoked' ? 'The patient stopped sharing their glucose data with you' : `The patient's permission expired at ${endWords(ended.accessToDate ?? ended.accessTo)}`;
    show(accessBox, notice('error', 'Access ended.', el('p', { 'data-access': 'ended' }, `${how}. Ask the patient to share it again if you still need it.`)));
  } else if (grants.some((g) => g.state === 'pending' || g.state === 'not-started')) {
    show(accessBox, notice('warn', 'Access not yet in effect.', el('p', { 'data-access': 'pending' }, 'The patient has shared their data, but the permission is not active yet.')));
  } else {
    show(accessBox, notice('error', 'No access granted.', el('p', { 'data-access': 'none' },
      'This patient has not shared their glucose data with you. The patient can share it from the GlucoGuard patient portal.')));
  }
  return [];
}

async function load() {
  show(reportBox, el('p', { role: 'status' }, 'Loading the report…'));
  const active = await showAccess();
  if (active === 'ended') return endSession();
  if (active.length === 0) {
    show(reportBox, el('p', { 'data-report': 'none' }, 'No report is shown because you do not have access to this patient\'s glucose data.'));
    return;
  }
  if (!bannerShown) {
    bannerShown = true;
    await showBanner();
  }
  try {
    const covers = `The patient's permission covers data ${active.map(dataPeriodWords).join('; ')}.`;
    if (!(await hasReadings(client, client.patient.id, period, PURPOSE))) {
      show(reportBox, notice('warn', 'No glucose readings to show.', `There are no CGM readings you may see in the last ${period} days. ${covers}`));
      return;
    }
    const report = await loadReport(client, client.patient.id, period, PURPOSE);
    show(reportBox, el('h2', { id: 'report-title' }, `AGP report – last ${period} days`), renderReport(report));
  } catch (err) {
    const status = statusOf(err);
    if (status === 404 || status === 403) {
      show(reportBox, notice('warn', 'No glucose readings to show.', `There are no CGM readings you may see in the last ${period} days. The patient's permission covers data ${active.map(dataPeriodWords).join('; ')}.`));
    } else if (sessionEnded(err)) {
      endSession();
    } else {
      show(reportBox, notice('error', 'The report could not be loaded.', 'Please try again in a moment.'));
    }
  }
}

try {
  client = cancellableRequests(await window.FHIR.oauth2.ready());
  show(document.getElementById('session'), signOutButton(client, 'signed-out.html'));
  await applySmartStyle(client.state.tokenResponse?.smart_style_url);
  document.body.dataset.needPatientBanner = String(!!client.state.tokenResponse?.need_patient_banner);
  show(controls,
    periodSelector(period, (d) => { period = d; void load(); }),
    el('p', {}, el('button', { type: 'button', class: 'secondary', onclick: () => void load() }, 'Refresh'), ' ',
      el('button', { type: 'button', class: 'secondary', onclick: () => window.print() }, 'Print')));
  await load();
  if (!bannerShown && client.state.tokenResponse?.need_patient_banner) {
    // Without access the patient's details are not ours to read: the record id the EHR gave us.
    banner.hidden = false;
    show(banner, el('span', {}, el('strong', {}, 'Patient')), el('span', {}, `Record ID ${client.patient.id}`));
  }
} catch (err) {
  // The authorization server sent the browser back with an error (RFC 6749 §4.1.2.1): its own words
  // are not shown (they come in the URL, anyone can write them); a plain sentence per case is.
  const oauthError = client ? null : new URLSearchParams(window.location.search).get('error');
  if (oauthError) {
    forgetSession();
    const denied = oauthError === 'access_denied';
    show(reportBox, notice('error', 'The sign-in did not finish.', denied
      ? 'Access to the health record was not allowed, so no patient data is shown.'
      : 'The link from your EHR may have expired or been used already. Open the viewer again from the patient\'s record in your EHR.'),
    el('p', { 'data-oauth-error': denied ? 'access_denied' : 'other' }, el('a', { class: 'button', href: 'launch.html' }, 'Sign in again')));
  } else if (!client && !hasSession()) {
    // Signed out (or never signed in) in this tab: say so, and how to come back.
    show(reportBox, notice('info', 'You are not signed in.', 'Open the viewer from the patient\'s record in your EHR, or sign in here and choose the patient.'),
      el('p', { 'data-signed-out': '' }, el('a', { class: 'button', href: 'launch.html' }, 'Sign in')));
  } else {
    show(reportBox, notice('error', 'This app could not connect to the health record.', 'Open it again from the patient\'s record in your EHR.'));
  }
}
