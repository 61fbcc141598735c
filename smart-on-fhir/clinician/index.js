// The clinician's CGM viewer after an EHR launch: patient banner, who granted access until when,
// the AGP report for 14/30/90 days, and plain words when access ended or was never granted.
import { api, applySmartStyle, CLINICIAN_PURPOSE_WORDS, el, endWords, fmtDate, notice, show, statusOf, dataWords } from '../shared/dom.js';
import { hasReadings, loadReport, periodSelector, renderReport } from '../shared/agp.js';
import { hasSession, signOutButton } from '../shared/session.js';

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

/** Who granted access until when; returns the active grant or undefined. */
async function showAccess() {
  let grants = [];
  try {
    grants = (await api(client, `/apps/api/access?patient=${encodeURIComponent(client.patient.id)}`)).grants;
  } catch {
    show(accessBox, notice('warn', 'The access status could not be checked.'));
    return undefined;
  }
  const active = grants.find((g) => g.state === 'active');
  if (active) {
    show(accessBox, notice('ok', `Access granted by ${active.grantedByName ?? 'the patient'} until ${endWords(active.accessToDate ?? active.accessTo)}.`,
      el('p', { 'data-access': 'active' },
        `Covers ${dataWords(active.classes, "the patient's")} ${dataPeriodWords(active)}, for ${active.purposes.map((p) => CLINICIAN_PURPOSE_WORDS[p] ?? p).join(', ')}. `
        + 'Each time you open this report the patient can see it in their access log.')));
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
  return undefined;
}

async function load() {
  show(reportBox, el('p', { role: 'status' }, 'Loading the report…'));
  const active = await showAccess();
  if (!active) {
    show(reportBox, el('p', { 'data-report': 'none' }, 'No report is shown because you do not have access to this patient\'s glucose data.'));
    return;
  }
  if (!bannerShown) {
    bannerShown = true;
    await showBanner();
  }
  try {
    if (!(await hasReadings(client, client.patient.id, period, PURPOSE))) {
      show(reportBox, notice('warn', 'No glucose readings to show.', `There are no CGM readings you may see in the last ${period} days. The patient's permission covers data ${dataPeriodWords(active)}.`));
      return;
    }
    const report = await loadReport(client, client.patient.id, period, PURPOSE);
    show(reportBox, el('h2', { id: 'report-title' }, `AGP report – last ${period} days`), renderReport(report));
  } catch (err) {
    const status = statusOf(err);
    if (status === 404 || status === 403) {
      show(reportBox, notice('warn', 'No glucose readings to show.', `There are no CGM readings you may see in the last ${period} days. The patient's permission covers data ${dataPeriodWords(active)}.`));
    } else if (status === 401) {
      show(reportBox, notice('error', 'Your session has ended.', 'Open the app again from the EHR.'));
    } else {
      show(reportBox, notice('error', 'The report could not be loaded.', 'Please try again in a moment.'));
    }
  }
}

try {
  client = await window.FHIR.oauth2.ready();
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
  if (!client && !hasSession()) {
    // Signed out (or never signed in) in this tab: say so, and how to come back.
    show(reportBox, notice('info', 'You are not signed in.', 'Open the viewer from the patient\'s record in your EHR, or sign in here and choose the patient.'),
      el('p', { 'data-signed-out': '' }, el('a', { class: 'button', href: 'launch.html' }, 'Sign in')));
  } else {
    show(reportBox, notice('error', 'This app could not connect to the health record.', 'Open it again from the patient\'s record in your EHR.'));
  }
}
