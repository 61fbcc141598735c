/**
 * The IG's cgm-summary Observation and its member Observations (times in ranges, mean glucose in
 * both units, GMI, CV, days of wear, sensor active percentage) built from computed metrics.
 * Members reference each other by `urn:uuid:` fullUrls, ready for a transaction Bundle.
 */
import { createHash } from 'node:crypto';
import type { CodeableConcept, Observation, ObservationComponent, Quantity } from '@medplum/fhirtypes';
import { CGM_IG, GLUCOSE_QUANTITY, LOINC, OBSERVATION_CATEGORY, stableUuid, type ConvertContext, type ConvertedEntry } from './fhir.js';
import { SENSOR_RANGE_MGDL, type CgmMetrics } from './metrics.js';

export const SUMMARY_PROFILE = {
  summary: `${CGM_IG}cgm-summary`,
  timesInRanges: `${CGM_IG}cgm-summary-times-in-ranges`,
  meanMass: `${CGM_IG}cgm-summary-mean-glucose-mass-per-volume`,
  meanMoles: `${CGM_IG}cgm-summary-mean-glucose-moles-per-volume`,
  gmi: `${CGM_IG}cgm-summary-gmi`,
  cv: `${CGM_IG}cgm-summary-coefficient-of-variation`,
  daysOfWear: `${CGM_IG}cgm-summary-days-of-wear`,
  sensorActive: `${CGM_IG}cgm-summary-sensor-active-percentage`,
} as const;

/** LOINC codes the IG fixes for each summary observation and times-in-ranges component. */
export const SUMMARY_CODE = {
  summary: { code: '107931-8', label: 'Continuous glucose monitoring summary panel - Reporting Period' },
  timesInRanges: { code: '106793-3', label: 'Continuous glucose monitoring time in ranges panel' },
  meanMass: { code: '97507-8', label: 'Glucose [Mass/volume] mean in Interstitial fluid by Continuous glucose monitoring' },
  meanMoles: { code: '105273-7', label: 'Glucose [Moles/volume] mean in Interstitial fluid by Continuous glucose monitoring' },
  gmi: { code: '97506-0', label: 'Glucose management indicator' },
  cv: { code: '104638-2', label: 'Coefficient of variation of glucose by Continuous glucose monitoring' },
  daysOfWear: { code: '104636-6', label: 'Continuous glucose monitoring duration of use' },
  sensorActive: { code: '104637-4', label: 'Continuous glucose monitoring sensor wear time active' },
  veryLow: { code: '104642-4', label: 'Time below range level 2 (< 54 mg/dL)' },
  low: { code: '104641-6', label: 'Time below range level 1 (54–69 mg/dL)' },
  target: { code: '97510-2', label: 'Time in range (70–180 mg/dL)' },
  high: { code: '104640-8', label: 'Time above range level 1 (181–250 mg/dL)' },
  veryHigh: { code: '104639-0', label: 'Time above range level 2 (> 250 mg/dL)' },
} as const;

export const SUMMARY_IDENTIFIER_SYSTEM = 'urn:glucoguard:cgm-summary';

const LABORATORY: CodeableConcept[] = [{ coding: [{ system: OBSERVATION_CATEGORY, code: 'laboratory', display: 'Laboratory' }] }];
const percent = (value: number): Quantity => ({ value, unit: '%', system: 'http://unitsofmeasure.org', code: '%' });
// LOINC codings carry code and system only, like the IG's examples (no display to get wrong).
const loinc = (c: { code: string; label: string }): CodeableConcept => ({ coding: [{ system: LOINC, code: c.code }], text: c.label });

export interface CgmSummaryEntries {
  /** The cgm-summary panel (first) followed by its members. */
  entries: ConvertedEntry<Observation>[];
  summary: Observation;
  members: Observation[];
}

/**
 * Builds the cgm-summary Observation and its seven members for a patient from metrics. Each carries
 * an identifier derived from (patient, period, code), so storing the same summary twice matches.
 */
export function buildCgmSummary(metrics: CgmMetrics, ctx: ConvertContext & { issued?: string }): CgmSummaryEntries {
  const period = { start: metrics.startDate, end: metrics.endDate };
  const make = (key: keyof typeof SUMMARY_PROFILE, body: Partial<Observation>): ConvertedEntry<Observation> => {
    const code = SUMMARY_CODE[key];
    const value = createHash('sha256').update(`${ctx.patient}\u0000${metrics.start}\u0000${metrics.end}\u0000${code.code}`).digest('hex').slice(0, 32);
    const resource: Observation = {
      resourceType: 'Observation',
      meta: { profile: [SUMMARY_PROFILE[key]] },
      identifier: [{ system: SUMMARY_IDENTIFIER_SYSTEM, value }],
      status: 'final',
      category: LABORATORY,
      code: loinc(code),
      subject: { reference: ctx.patient },
      effectivePeriod: period,
      ...(ctx.issued ? { issued: ctx.issued } : {}),
      ...body,
    };
    return { fullUrl: stableUuid(`${SUMMARY_IDENTIFIER_SYSTEM}|${value}`), resource, ifNoneExist: `identifier=${SUMMARY_IDENTIFIER_SYSTEM}|${value}` };
  };
  const tir = metrics.timeInRanges;
  const component = (key: 'veryLow' | 'low' | 'target' | 'high' | 'veryHigh'): ObservationComponent => ({
    code: loinc(SUMMARY_CODE[key]), valueQuantity: percent(tir[key]),
  });
  const members = [
    make('timesInRanges', { component: [component('veryLow'), component('low'), component('target'), component('high'), component('veryHigh')] }),
    make('meanMass', { valueQuantity: { value: metrics.meanMgdl, ...GLUCOSE_QUANTITY['mg/dL'] } }),
    make('meanMoles', { valueQuantity: { value: metrics.meanMmol, ...GLUCOSE_QUANTITY['mmol/L'] } }),
    make('gmi', { valueQuantity: percent(metrics.gmi) }),
    make('cv', { valueQuantity: percent(metrics.cv) }),
    make('daysOfWear', { valueQuantity: { value: metrics.daysOfWear, unit: 'days', system: 'http://unitsofmeasure.org', code: 'd' } }),
    make('sensorActive', { valueQuantity: percent(metrics.sensorActivePercent) }),
  ];
  const notes = [...metrics.warnings.map((text) => ({ text: `Data sufficiency: ${text}` })), ...outOfRangeNotes(metrics)];
  const summary = make('summary', {
    hasMember: members.map((m) => ({ reference: m.fullUrl })),
    ...(notes.length ? { note: notes } : {}),
  });
  return { entries: [summary, ...members], summary: summary.resource, members: members.map((m) => m.resource) };
}

/** Says how HIGH/LOW readings entered the figures (see metrics.ts), so a reader knows the mean is a bound. */
function outOfRangeNotes(metrics: CgmMetrics): { text: string }[] {
  const notes: { text: string }[] = [];
  if (metrics.belowRange) {
    notes.push({ text: `Sensor range: ${metrics.belowRange} of ${metrics.readings} readings below the sensor's measurement range (LOW) are counted as very low (< 54 mg/dL), and as ${SENSOR_RANGE_MGDL.low} mg/dL in mean, GMI and CV` });
  }
  if (metrics.aboveRange) {
    notes.push({ text: `Sensor range: ${metrics.aboveRange} of ${metrics.readings} readings above the sensor's measurement range (HIGH) are counted as very high (> 250 mg/dL), and as ${SENSOR_RANGE_MGDL.high} mg/dL in mean, GMI and CV` });
  }
  return notes;
}
