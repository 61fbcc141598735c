// The AGP report component, shared by the clinician viewer and the patient portal: metrics from
// $cgm-summary, the AGP percentile chart from $cgm-agp, the time-in-ranges bar, daily profiles and
// integrity markers of the readings. Drawn as SVG by this file (no chart library).
import { el, svg, fmtDate } from './dom.js';

const LOINC = 'http://loinc.org';
export const READING_CODE = `${LOINC}|99504-3`;
/** A reading stored in mmol/L (a Clarity or LibreView export in mmol/L) has its own LOINC code. */
export const READING_CODE_MMOL = `${LOINC}|105272-9`;
// Every search for readings asks for both: a patient whose sensor reports mmol/L has no 99504-3 at all.
const READING_CODES = encodeURIComponent(`${READING_CODE},${READING_CODE_MMOL}`);
const DAY = 86_400_000;
/** mg/dL per mmol/L, as the server's metrics use it (docs/cgm-metrics.md). */
const MGDL_PER_MMOL = 18.01559;

/** The five standard ranges, highest first (the order of the AGP stacked bar). */
export const RANGES = [
  { key: 'veryHigh', code: '104639-0', label: 'Very high', limits: 'above 250 mg/dL', mmolLimits: 'above 13.9 mmol/L', colour: 'var(--very-high)' },
  { key: 'high', code: '104640-8', label: 'High', limits: '181–250 mg/dL', mmolLimits: '10.1–13.9 mmol/L', colour: 'var(--high)' },
  { key: 'target', code: '97510-2', label: 'In range', limits: '70–180 mg/dL', mmolLimits: '3.9–10.0 mmol/L', colour: 'var(--in-range)' },
  { key: 'low', code: '104641-6', label: 'Low', limits: '54–69 mg/dL', mmolLimits: '3.0–3.8 mmol/L', colour: 'var(--low)' },
  { key: 'veryLow', code: '104642-4', label: 'Very low', limits: 'below 54 mg/dL', mmolLimits: 'below 3.0 mmol/L', colour: 'var(--very-low)' },
];

const MEMBER = { mean: '97507-8', meanMmol: '105273-7', gmi: '97506-0', cv: '104638-2', days: '104636-6', active: '104637-4', tir: '106793-3', panel: '107931-8' };

/** The unit most of these readings were stored in (the patient's sensor's): 'mmol/L' or 'mg/dL'. */
export function unitOf(observations) {
  let mmol = 0;
  for (const o of observations) if (o?.valueQuantity?.unit === 'mmol/L' || o?.valueQuantity?.code === 'mmol/L') mmol++;
  return mmol > observations.length / 2 ? 'mmol/L' : 'mg/dL';
}

/** A glucose value (given in mg/dL) in the report's unit, as text. */
function glucose(mgdl, unit) {
  return unit === 'mmol/L' ? (mgdl / MGDL_PER_MMOL).toFixed(1) : String(Math.round(mgdl));
}

function codeOf(resource) {
  return resource?.code?.coding?.find((c) => c.system === LOINC)?.code;
}

/** Reads the $cgm-summary collection Bundle into plain numbers. */
export function parseSummary(bundle) {
  const obs = (bundle?.entry ?? []).map((e) => e.resource).filter((r) => r?.resourceType === 'Observation');
  const by = (code) => obs.find((o) => codeOf(o) === code);
  const panel = by(MEMBER.panel);
  const tirObs = by(MEMBER.tir);
  const tir = {};
  for (const r of RANGES) tir[r.key] = tirObs?.component?.find((c) => codeOf(c) === r.code)?.valueQuantity?.value ?? 0;
  return {
    start: panel?.effectivePeriod?.start,
    end: panel?.effectivePeriod?.end,
    tir,
    mean: by(MEMBER.mean)?.valueQuantity?.value,
    meanMmol: by(MEMBER.meanMmol)?.valueQuantity?.value,
    gmi: by(MEMBER.gmi)?.valueQuantity?.value,
    cv: by(MEMBER.cv)?.valueQuantity?.value,
    days: by(MEMBER.days)?.valueQuantity?.value,
    active: by(MEMBER.active)?.valueQuantity?.value,
    // the panel's notes: data-sufficiency warnings, and other notes (how LOW/HIGH readings count)
    warnings: (panel?.note ?? []).filter((n) => /^Data sufficiency:/.test(n.text)).map((n) => n.text.replace(/^Data sufficiency:\s*/, '')),
    notes: (panel?.note ?? []).filter((n) => !/^Data sufficiency:/.test(n.text)).map((n) => n.text),
  };
}

/** How the report shows a percentage of time (whole numbers; "<1" for a small non-zero share). */
export function pct(value) {
  if (value === undefined || value === null) return '–';
  if (value > 0 && value < 0.5) return '<1';
  return String(Math.round(value));
}

/** The metric tiles. */
export function metricList(s, periodDays, unit = 'mg/dL') {
  const item = (key, label, text, raw) => el('li', { 'data-metric': key, 'data-value': raw ?? '' },
    el('span', { class: 'label' }, label), el('span', { class: 'value' }, text));
  return el('ul', { class: 'metrics', 'aria-label': 'Glucose statistics' },
    item('mean', 'Mean glucose', s.mean === undefined ? '–' : unit === 'mmol/L'
      ? `${(s.meanMmol ?? s.mean / MGDL_PER_MMOL).toFixed(1)} mmol/L` : `${Math.round(s.mean)} mg/dL`, s.mean),
    item('gmi', 'GMI (glucose management indicator)', s.gmi === undefined ? '–' : `${s.gmi.toFixed(1)} %`, s.gmi),
    item('cv', 'Glucose variability (CV)', s.cv === undefined ? '–' : `${s.cv.toFixed(1)} %`, s.cv),
    item('active', 'Sensor active', s.active === undefined ? '–' : `${s.active.toFixed(1)} %`, s.active),
    item('days', 'Days of wear (days with readings)', s.days === undefined ? '–' : `${s.days} ${s.days === 1 ? 'day' : 'days'}`, s.days));
}

/** The time-in-ranges stacked bar with a text label per range (meaning never by colour alone). */
export function tirBar(tir, unit = 'mg/dL') {
  const height = 300;
  const width = 60;
  let y = 0;
  const rects = [];
  for (const r of RANGES) {
    const h = Math.max(0, (tir[r.key] ?? 0) / 100 * height);
    rects.push(svg('rect', { x: 0, y: y.toFixed(2), width, height: h.toFixed(2), fill: r.colour, stroke: '#222', 'stroke-width': h > 0 ? 0.5 : 0 }));
    y += h;
  }
  const picture = svg('svg', { class: 'tir', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-hidden': 'true', focusable: 'false', style: 'max-width:4rem' }, rects);
  const legend = el('ul', { class: 'tir-legend' }, RANGES.map((r) => el('li', { 'data-range': r.key },
    el('span', { class: 'swatch', style: `background:${r.colour}` }),
    el('span', {}, el('strong', { 'data-range-value': r.key }, `${pct(tir[r.key])} %`), ` ${r.label} (${unit === 'mmol/L' ? r.mmolLimits : r.limits})`))));
  return el('figure', { class: 'tir-figure', style: 'margin:0' },
    el('figcaption', {}, el('h3', {}, 'Time in ranges')),
    el('div', { style: 'display:flex;gap:1rem;align-items:flex-start' }, picture, legend),
    el('p', { class: 'target-note' }, 'Goal for most adults: in range more than 70 %, low less than 4 %, very low less than 1 %.'));
}

const Y_MAX = 350;

/** The AGP chart: 5–95 % and 25–75 % bands and the median over 24 h. */
export function agpChart(agp, unit = 'mg/dL') {
  const W = 720, H = 300, L = 44, R = 10, T = 10, B = 30;
  const x = (minute) => L + (minute / 1440) * (W - L - R);
  const y = (mgdl) => T + (1 - Math.min(mgdl, Y_MAX) / Y_MAX) * (H - T - B);
  const bins = agp.bins ?? [];
  const half = (agp.binMinutes ?? 15) / 2;
  // Runs of consecutive bins with data; an empty bin breaks the bands.
  const runs = [];
  let run = [];
  for (const b of bins) {
    if (b.n > 0 && b.p50 !== undefined) run.push(b);
    else if (run.length) { runs.push(run); run = []; }
  }
  if (run.length) runs.push(run);
  const band = (lo, hi, fill, label) => runs.map((r) => svg('polygon', {
    class: `band band-${label}`, fill, stroke: 'none',
    points: [...r.map((b) => `${x(b.minute + half).toFixed(1)},${y(b[hi]).toFixed(1)}`), ...[...r].reverse().map((b) => `${x(b.minute + half).toFixed(1)},${y(b[lo]).toFixed(1)}`)].join(' '),
  }));
  const median = runs.map((r) => svg('polyline', {
    class: 'median', fill: 'none', stroke: 'var(--median)', 'stroke-width': 2.5,
    points: r.map((b) => `${x(b.minute + half).toFixed(1)},${y(b.p50).toFixed(1)}`).join(' '),
  }));
  const grid = [];
  for (const v of [54, 70, 180, 250, 350]) {
    const target = v === 70 || v === 180;
    grid.push(svg('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: target ? '#2e7d32' : '#bbb', 'stroke-width': target ? 1.5 : 1, 'stroke-dasharray': target ? '' : '3 3' }));
    grid.push(svg('text', { x: L - 4, y: y(v) + 4, 'text-anchor': 'end', 'font-size': 11 }, glucose(v, unit)));
  }
  for (let h = 0; h <= 24; h += 3) {
    grid.push(svg('line', { x1: x(h * 60), x2: x(h * 60), y1: T, y2: H - B, stroke: '#e0e0e0' }));
    const label = h === 0 || h === 24 ? '12am' : h === 12 ? '12pm' : h < 12 ? `${h}am` : `${h - 12}pm`;
    grid.push(svg('text', { x: x(h * 60), y: H - B + 16, 'text-anchor': 'middle', 'font-size': 11 }, label));
  }
  const withData = bins.filter((b) => b.n > 0 && b.p50 !== undefined);
  const medianAll = withData.length ? withData.map((b) => b.p50).sort((a, b) => a - b)[Math.floor(withData.length / 2)] : undefined;
  const desc = `Ambulatory glucose profile over ${fmtDate(agp.startTime)} to ${fmtDate(agp.endTime)}, ${agp.readings} readings. `
    + (withData.length
      ? `Median glucose by time of day ranges from ${glucose(Math.min(...withData.map((b) => b.p50)), unit)} to ${glucose(Math.max(...withData.map((b) => b.p50)), unit)} ${unit}`
        + `, typically about ${glucose(medianAll, unit)} ${unit}.`
      : 'No time of day has readings.');
  const chart = svg('svg', { class: 'agp', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': 'agp-title agp-desc', 'data-bins': withData.length },
    svg('title', { id: 'agp-title' }, 'Ambulatory glucose profile (AGP)'),
    svg('desc', { id: 'agp-desc' }, desc),
    svg('rect', { x: L, y: y(180), width: W - L - R, height: y(70) - y(180), fill: '#e8f5e9' }),
    grid,
    band('p5', 'p95', 'var(--band-outer)', 'outer'),
    band('p25', 'p75', 'var(--band-inner)', 'inner'),
    median,
    svg('text', { x: 12, y: T + (H - T - B) / 2, transform: `rotate(-90 12 ${T + (H - T - B) / 2})`, 'text-anchor': 'middle', 'font-size': 11 }, unit));
  const legend = el('ul', { class: 'tir-legend', 'aria-label': 'Chart key' },
    el('li', {}, el('span', { class: 'swatch', style: 'background:var(--band-outer)' }), '5th–95th percentile (light band)'),
    el('li', {}, el('span', { class: 'swatch', style: 'background:var(--band-inner)' }), '25th–75th percentile (dark band)'),
    el('li', {}, el('span', { class: 'swatch', style: 'background:var(--median);height:.25rem' }), 'Median (line)'),
    el('li', {}, el('span', { class: 'swatch', style: 'background:#e8f5e9' }), `Target range ${unit === 'mmol/L' ? '3.9–10.0 mmol/L' : '70–180 mg/dL'} (shaded, green lines)`));
  const table = el('details', { class: 'no-print' }, el('summary', {}, `AGP values by hour (table, ${unit})`),
    el('table', {}, el('thead', {}, el('tr', {}, ['Time', '5th', '25th', 'Median', '75th', '95th', 'Readings'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, bins.filter((b) => b.minute % 60 === 0).map((b) => el('tr', {}, el('th', { scope: 'row' }, b.time),
        ['p5', 'p25', 'p50', 'p75', 'p95'].map((k) => el('td', {}, b[k] === undefined ? '–' : glucose(b[k], unit))), el('td', {}, String(b.n)))))));
  return el('figure', { class: 'agp-figure', style: 'margin:0' },
    el('figcaption', {}, el('h3', {}, 'Ambulatory glucose profile (AGP)')), chart, legend, table);
}

/** Daily glucose profiles: one small chart per day for the last 14 days of the period. */
export function dailyProfiles(readings, endIso, days = 14) {
  const end = new Date(endIso ?? Date.now());
  const W = 240, H = 80;
  const figures = [];
  for (let d = days - 1; d >= 0; d--) {
    // Local midnights by the calendar, not 24-hour steps: a day when the clocks change lasts 23 or
    // 25 hours, and stepping by 24 h would shift every earlier day by the hour.
    const from = new Date(end.getFullYear(), end.getMonth(), end.getDate() - d).getTime();
    const to = new Date(end.getFullYear(), end.getMonth(), end.getDate() - d + 1).getTime();
    const points = readings.filter((r) => r.t >= from && r.t < to);
    const x = (t) => ((t - from) / (to - from)) * W;
    const y = (v) => (1 - Math.min(v, Y_MAX) / Y_MAX) * H;
    const segments = [];
    let seg = [];
    let prev;
    for (const p of points) {
      if (prev !== undefined && p.t - prev > 30 * 60_000 && seg.length) { segments.push(seg); seg = []; }
      seg.push(`${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
      prev = p.t;
    }
    if (seg.length) segments.push(seg);
    const label = fmtDate(new Date(from).toISOString());
    const inRange = points.length ? Math.round(points.filter((p) => p.inRange).length / points.length * 100) : undefined;
    figures.push(el('figure', { 'data-day': label },
      svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': points.length ? `${label}: ${points.length} readings, ${inRange} % in range` : `${label}: no readings` },
        svg('rect', { x: 0, y: y(180), width: W, height: y(70) - y(180), fill: '#e8f5e9' }),
        segments.map((s) => svg('polyline', { points: s.join(' '), fill: 'none', stroke: 'var(--median)', 'stroke-width': 1.2 }))),
      el('figcaption', {}, points.length ? `${label} · ${inRange} % in range` : `${label} · no data`)));
  }
  return el('section', { 'aria-labelledby': 'daily-title' }, el('h3', { id: 'daily-title' }, 'Daily glucose profiles (last 14 days)'), el('div', { class: 'daily' }, figures));
}

const INTEGRITY = 'urn:glucoguard:integrity';

/**
 * Counts the integrity marks of the readings (meta.tag urn:glucoguard:integrity). GlucoGuard checks
 * every resource it serves: a version that matched its anchored commitment goes out without a tag
 * (a mismatch is never served), so no tag means verified; `pending` = not anchored yet,
 * `unverified` = no commitment to check against.
 */
export function integrityOf(observations) {
  const counts = { verified: 0, pending: 0, unverified: 0, unmarked: 0 };
  for (const o of observations) {
    const tag = o.meta?.tag?.find((t) => t.system === INTEGRITY)?.code;
    if (tag === 'pending' || tag === 'unverified') counts[tag]++;
    else counts.verified++;
  }
  return counts;
}

export function integrityNote(counts) {
  const total = counts.verified + counts.pending + counts.unverified + counts.unmarked;
  const parts = [];
  if (counts.verified) parts.push(`${counts.verified} verified against the ledger (✔)`);
  if (counts.pending) parts.push(`${counts.pending} waiting to be anchored on the ledger (pending)`);
  if (counts.unverified) parts.push(`${counts.unverified} could not be verified (unverified)`);
  if (counts.unmarked) parts.push(`${counts.unmarked} without an integrity mark`);
  return el('p', { class: 'integrity', 'data-integrity': JSON.stringify(counts) },
    el('strong', {}, 'Integrity of the readings: '), total ? `${parts.join('; ')}.` : 'no readings in the last 14 days.');
}

/**
 * Readings (t ms, v mg/dL, inRange) from CGM Observations. In range is judged on the scale the reading
 * was stored in (3.9–10.0 mmol/L, 70–180 mg/dL), as the server's metrics do: 10.0 mmol/L is 180.16 mg/dL.
 */
export function readingsOf(observations) {
  return observations
    .map((o) => {
      const raw = o.valueQuantity?.value;
      const mmol = o.valueQuantity?.unit === 'mmol/L';
      return { t: Date.parse(o.effectiveDateTime), v: mmol ? raw * MGDL_PER_MMOL : raw, inRange: mmol ? raw >= 3.9 && raw <= 10.0 : raw >= 70 && raw <= 180 };
    })
    .filter((r) => Number.isFinite(r.t) && Number.isFinite(r.v))
    .sort((a, b) => a.t - b.t);
}

/**
 * Whether any CGM reading the requester may see falls in the last `periodDays` days (asked first,
 * so the apps can say "no readings" without provoking a 404 from the summary operations).
 */
export async function hasReadings(client, patientId, periodDays, headers = {}) {
  const from = new Date(Date.now() - periodDays * DAY).toISOString();
  const bundle = await client.request({
    url: `Observation?patient=Patient/${patientId}&code=${READING_CODES}&date=ge${encodeURIComponent(from)}&_count=1`,
    headers,
  });
  return (bundle?.entry ?? []).some((e) => e.resource?.resourceType === 'Observation');
}

/**
 * Fetches and renders the whole report for a patient with a fhirclient Client. `headers` are added
 * to every request (the clinician app sends its purpose of use). Throws the fhirclient error of the
 * summary request (404 when nothing is visible) for the caller to explain.
 */
export async function loadReport(client, patientId, periodDays, headers = {}) {
  const end = new Date();
  const start = new Date(end.getTime() - periodDays * DAY);
  const q = `start=${encodeURIComponent(start.toISOString())}&end=${encodeURIComponent(end.toISOString())}`;
  // The first and the last reading in the period: the summary's period is the one asked for.
  const inPeriod = `Observation?patient=Patient/${patientId}&code=${READING_CODES}`
    + `&date=ge${encodeURIComponent(start.toISOString())}&date=lt${encodeURIComponent(end.toISOString())}&_count=1&_sort=`;
  const [summaryBundle, agp, first, last] = await Promise.all([
    client.request({ url: `Patient/${patientId}/$cgm-summary?${q}`, headers }),
    client.request({ url: `Patient/${patientId}/$cgm-agp?${q}`, headers }),
    client.request({ url: `${inPeriod}date`, headers }),
    client.request({ url: `${inPeriod}-date`, headers }),
  ]);
  const readingsSpan = { first: effectiveOf(firstObservation(first), 'start'), last: effectiveOf(firstObservation(last), 'end') };
  const dailyFrom = new Date(end.getTime() - 14 * DAY);
  const observations = await searchAll(client,
    `Observation?patient=Patient/${patientId}&code=${READING_CODES}&date=ge${encodeURIComponent(dailyFrom.toISOString())}&_sort=-date&_count=1000`, headers);
  const unit = unitOf([firstObservation(first), firstObservation(last), ...observations].filter(Boolean));
  return { summary: parseSummary(summaryBundle), agp: agpFromParameters(agp), observations, start, end, periodDays, readingsSpan, unit };
}

/**
 * $cgm-agp's Parameters (src/cgm/agp.ts agpParameters) as the chart reads them: one member per
 * parameter (a reference as its text) and `bins`, the `bin` parameters' parts, in order.
 */
export function agpFromParameters(parameters) {
  const plain = (list) => {
    const out = {};
    for (const p of list ?? []) {
      if (p.name === 'bin') (out.bins ??= []).push(plain(p.part));
      else {
        const key = Object.keys(p).find((k) => k.startsWith('value'));
        out[p.name] = key === 'valueReference' ? p[key].reference : p[key];
      }
    }
    return out;
  };
  return plain(parameters?.parameter);
}

function firstObservation(bundle) {
  return (bundle?.entry ?? []).map((e) => e.resource).find((r) => r?.resourceType === 'Observation');
}

/** When a reading was taken: its effectiveDateTime, or the given end of its effectivePeriod. */
function effectiveOf(obs, side) {
  return obs?.effectiveDateTime ?? obs?.effectivePeriod?.[side] ?? obs?.effectivePeriod?.start;
}

/** Every page of a search (our own loop: each page request must carry the same headers). */
async function searchAll(client, url, headers, maxPages = 10) {
  const out = [];
  let next = url;
  for (let page = 0; next && page < maxPages; page++) {
    const bundle = await client.request({ url: next, headers });
    for (const e of bundle?.entry ?? []) if (e.resource?.resourceType === 'Observation') out.push(e.resource);
    next = bundle?.link?.find((l) => l.relation === 'next')?.url;
  }
  return out;
}

export function renderReport(report) {
  const { summary, agp, observations, periodDays, start, end, readingsSpan, unit = 'mg/dL' } = report;
  const warnings = summary.warnings.length
    ? el('div', { class: 'notice warn', role: 'note', 'data-sufficiency': 'warning' },
      el('p', {}, el('strong', {}, '⚠ Data sufficiency: ')), el('ul', {}, summary.warnings.map((w) => el('li', {}, w))))
    : el('p', { 'data-sufficiency': 'ok' }, '✔ Enough data for a reliable report (at least 14 days and 70 % sensor time).');
  const notes = summary.notes.length ? el('ul', { class: 'report-notes', 'data-notes': summary.notes.length }, summary.notes.map((n) => el('li', {}, n))) : null;
  const span = readingsSpan?.first && readingsSpan?.last
    ? `Readings from ${fmtDate(readingsSpan.first)} to ${fmtDate(readingsSpan.last)}.`
    : 'No readings in this period.';
  return el('div', {
    class: 'report', 'data-period-start': start.toISOString(), 'data-period-end': end.toISOString(), 'data-period-days': periodDays,
    'data-readings-first': readingsSpan?.first ?? '', 'data-readings-last': readingsSpan?.last ?? '', 'data-unit': unit,
  },
    el('p', {}, `Report period: ${fmtDate(start.toISOString())} – ${fmtDate(end.toISOString())} (${periodDays} days). `, el('span', { class: 'readings-span' }, span)),
    warnings,
    notes,
    metricList(summary, periodDays, unit),
    el('div', { class: 'report-grid' }, agpChart(agp, unit), tirBar(summary.tir, unit)),
    integrityNote(integrityOf(observations)),
    dailyProfiles(readingsOf(observations), end.toISOString()));
}

/** The 14/30/90-day selector: calls onChange(days). */
export function periodSelector(current, onChange) {
  return el('fieldset', { class: 'period' }, el('legend', {}, 'Period'),
    [14, 30, 90].map((d) => el('span', { class: 'choice' },
      el('input', { type: 'radio', name: 'period', id: `period-${d}`, value: d, checked: d === current, onchange: () => onChange(d) }),
      el('label', { for: `period-${d}` }, `${d} days`))));
}
