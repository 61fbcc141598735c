/**
 * `glucoguard ingest FILE --patient ID` and `glucoguard summary --patient ID`: the CGM entry points
 * for operators, on the same data directory / upstream as the server. Progress goes to stderr (a
 * bar on a terminal only), results to stdout. SIGINT (Ctrl-C) or SIGTERM during an import stops it
 * at the next chunk boundary (CgmIngestService.stop): what was stored is kept and said, the exit
 * code is 128 + the signal's number, and running the command again stores the rest.
 */
import { statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { Command, InvalidArgumentError } from 'commander';
import { UsageError, withApp, type OpenApp } from '../cli-app.js';
import { isGlucoGuardError } from '../errors.js';
import { OPEN_ACCESS } from '../fhir/access.js';
import { SENSOR_RANGE_MGDL, type CgmMetrics } from './metrics.js';
import { ImportInterrupted, INGEST_CHUNK, type CgmIngestService, type IngestProgress, type IngestReport } from './service.js';
import { CGM_FORMATS, type CgmFormat } from './types.js';

/** Adds the CGM commands; `open` builds the app (repository, facade) and is closed afterwards. */
export function registerCgmCommands(program: Command, open: OpenApp): void {
  program
    .command('ingest')
    .description('import a CGM export (Dexcom API or Clarity CSV, Nightscout, LibreView, Tidepool, Open mHealth, Apple Health) for a patient')
    .argument('<file>', 'export file')
    .requiredOption('--patient <id>', 'id of the Patient the readings belong to')
    .option('--format <format>', `source format (${CGM_FORMATS.join(', ')}); detected when absent`, (v) => {
      if (!CGM_FORMATS.includes(v as CgmFormat)) throw new InvalidArgumentError(`expected one of ${CGM_FORMATS.join(', ')}`);
      return v;
    })
    .option('--tz <zone>', 'IANA time zone of device-local timestamps (LibreView, Dexcom Clarity); default GLUCOGUARD_DEFAULT_TZ')
    .option('--date-order <order>', 'day/month order of LibreView timestamps, DMY or MDY; decided from the data when absent', (v) => {
      if (v !== 'DMY' && v !== 'MDY') throw new InvalidArgumentError('expected DMY or MDY');
      return v;
    })
    .option('--partial', 'store the good records of a file with rejected ones (default: store nothing)')
    .option('--remove', 'remove the file\'s readings instead (those stored with its content, read with these options): undoes an import')
    .option('--dry-run', 'check the file and compare it with what is stored, write nothing: the report says what the import (or removal) would do')
    .option('--json', 'print the report as JSON')
    .action(async (file: string, opts: { patient: string; format?: CgmFormat; tz?: string; dateOrder?: 'DMY' | 'MDY'; partial?: boolean; remove?: boolean; dryRun?: boolean; json?: boolean }) => {
      if (!statSync(file).isFile()) throw new Error(`${file} is not a file`); // a clear answer before anything opens
      // a patient never stored, as the ingest itself refuses it (exit 1), before an installation is set up for it
      await withApp(() => open({ setUp: true, withoutData: new Error(`Patient/${opts.patient} not found`) }), async (app) => {
        const bar = progressBar();
        const signals = stopOnSignal(app.cgm.ingest, bar);
        try {
          const report = await app.cgm.ingest.ingest(file, {
            patient: opts.patient, partial: opts.partial === true, remove: opts.remove === true, dryRun: opts.dryRun === true,
            ...(opts.format ? { format: opts.format } : {}), ...(opts.tz ? { timeZone: opts.tz } : {}),
            ...(opts.dateOrder ? { dateOrder: opts.dateOrder } : {}),
            onProgress: bar.update,
          });
          bar.done();
          console.log(opts.json ? JSON.stringify(report, null, 2) : formatReport(report));
          if (!report.accepted) {
            // the service's words name the API's partial import; here it is an option
            const nothing = report.remove ? (report.dryRun ? 'the removal would remove nothing' : 'nothing was removed') : report.dryRun ? 'the import would store nothing' : 'nothing was imported';
            console.error(`glucoguard: ${report.rejected} of ${report.read} records rejected; ${nothing} (run again with --partial to ${report.remove ? 'remove' : 'keep'} the good records)`);
            process.exitCode = 1;
          }
        } catch (err) {
          // a --tz that is no time zone is an option given wrongly (exit 2); the file's own problems stay failures (1)
          if (isGlucoGuardError(err, 'ERR_INVALID') && err.issues[0]?.expression?.[0] === 'tz') throw new UsageError(`--tz: ${err.message}`);
          if (!(err instanceof ImportInterrupted) || !signals.received) throw err;
          bar.done();
          console.error(opts.remove
            ? `glucoguard: ${signals.received}: ${err.stored ? `${err.stored} readings of ${file} were removed (whole chunks of ${INGEST_CHUNK})` : `nothing of ${file} was removed`}; `
              + `run the same command again${err.stored ? ' to remove the rest' : ''} (what is removed already counts as not stored)`
            : `glucoguard: ${signals.received}: ${err.stored ? `${err.stored} readings of ${file} were stored (whole chunks of ${INGEST_CHUNK}) and are kept` : `nothing of ${file} was stored`}; `
              + `run the same command again${err.stored ? ' to store the rest' : ''} (what is already stored counts as unchanged)`);
          process.exitCode = 128 + osConstants.signals[signals.received];
        } finally {
          signals.remove();
          bar.done();
        }
      });
    });

  program
    .command('summary')
    .description('CGM summary metrics (times in ranges, mean, GMI, CV, wear) for a patient over a period')
    .requiredOption('--patient <id>', 'id of the Patient')
    .option('--start <date>', 'period start (YYYY-MM-DD or date-time); default 14 days before the end')
    .option('--end <date>', 'period end (a date includes that day); default just after the last reading')
    .option('--tz <zone>', 'IANA time zone of the dates in --start/--end; default the UTC offset of the patient\'s readings around each date')
    .option('--store', 'store the cgm-summary Observations')
    .option('--json', 'print the cgm-summary Bundle (FHIR JSON)')
    .action((opts: { patient: string; start?: string; end?: string; tz?: string; store?: boolean; json?: boolean }) => withApp(open, async (app) => {
        const params = { ...(opts.start ? { start: opts.start } : {}), ...(opts.end ? { end: opts.end } : {}), ...(opts.tz ? { timeZone: opts.tz } : {}) };
        try {
          if (opts.json || opts.store) {
            const response = await app.cgm.operations.summary(OPEN_ACCESS, opts.patient, params, opts.store === true);
            console.log(JSON.stringify(response.body, null, 2));
            return;
          }
          const { metrics } = await app.cgm.operations.metrics(OPEN_ACCESS, opts.patient, params);
          console.log(formatSummary(opts.patient, metrics));
        } catch (err) {
          // the operation refuses a bad start, end or time zone as a bad request: here, an option given wrongly (exit 2)
          if (!isGlucoGuardError(err, 'ERR_INVALID')) throw err;
          const option = OPTION_OF_PARAMETER[err.issues[0]?.expression?.[0] ?? ''];
          throw new UsageError(option ? `${option}: ${err.message}` : err.message);
        }
    }));
}

/** The `summary` option each $cgm-summary parameter comes from, to name it in a refusal. */
const OPTION_OF_PARAMETER: Record<string, string> = { start: '--start', end: '--end', timeZone: '--tz' };

/**
 * The summary metrics for a person. Readings beyond the sensor's range (HIGH/LOW) get a line when
 * there are some: they are in the times in ranges, and in the mean only at the sensor's limits, so
 * the reader should know the mean is a bound (docs/cgm-metrics.md).
 */
export function formatSummary(patient: string, m: CgmMetrics): string {
  const t = m.timeInRanges;
  const beyond = [
    ...(m.belowRange ? [`${m.belowRange} LOW (taken as ${SENSOR_RANGE_MGDL.low} mg/dL)`] : []),
    ...(m.aboveRange ? [`${m.aboveRange} HIGH (taken as ${SENSOR_RANGE_MGDL.high} mg/dL)`] : []),
  ];
  return [
    `Patient/${patient}: ${m.startDate} to ${m.endDate} (${m.periodDays} days, ${m.readings} readings)`,
    `  time in ranges   very low ${t.veryLow} %  low ${t.low} %  target ${t.target} %  high ${t.high} %  very high ${t.veryHigh} %`,
    `  mean glucose     ${m.meanMgdl} mg/dL (${m.meanMmol} mmol/L)`,
    `  GMI              ${m.gmi} %`,
    `  CV               ${m.cv} %`,
    `  days of wear     ${m.daysOfWear}`,
    `  sensor active    ${m.sensorActivePercent} %`,
    ...(beyond.length ? [`  beyond sensor    ${m.belowRange + m.aboveRange} of ${m.readings} readings: ${beyond.join(', ')}`] : []),
    ...m.warnings.map((w) => `  warning: ${w}`),
  ].join('\n');
}

/** The import report for a person: counts, then each issue with its line. */
export function formatReport(r: IngestReport): string {
  // a dry run says what the import (or removal) would do, in the same layout
  const would = r.dryRun ? 'would be ' : '';
  const work = r.remove ? 'removal' : 'import';
  const outcome = r.dryRun ? `DRY RUN, nothing ${r.remove ? 'removed' : 'stored'}; the ${work} would be ${r.accepted ? 'accepted' : 'REJECTED'}`
    : r.remove ? (r.accepted ? 'removed' : 'REJECTED (nothing removed)') : r.accepted ? 'imported' : 'REJECTED (nothing stored)';
  const lines = [
    `${outcome}: ${r.format}${r.detected ? ' (detected)' : ''} for Patient/${r.patient}${r.partial ? ', partial' : ''}`,
    r.remove
      ? `  records read ${r.read}, ${would}removed ${r.removed ?? 0}, kept (changed since) ${r.changedSince ?? 0}, not stored ${r.notStored ?? 0}, skipped ${r.skipped}, rejected ${r.rejected}`
      : `  records read ${r.read}, ${would}created ${r.created}, unchanged ${r.unchanged}, ${would}corrected ${r.corrected}, skipped ${r.skipped}, rejected ${r.rejected}`,
  ];
  if (r.devicesCreated) lines.push(`  devices ${would}created ${r.devicesCreated}`);
  if (r.linked) lines.push(`  ${would}linked to their Device ${r.linked} (stored before without one; a new version, value unchanged)`);
  if (r.first && r.last) lines.push(`  readings from ${r.first} to ${r.last}`);
  if (r.timeZone) lines.push(`  time zone ${r.timeZone.zone} (${r.timeZone.from === 'option' ? 'given' : 'server default'})`);
  if (r.dateOrder) lines.push(`  date order ${r.dateOrder.order} (${r.dateOrder.from}${r.dateOrder.ambiguous ? ', ambiguous' : ''})`);
  for (const w of r.warnings) lines.push(`  warning: ${w}`);
  const reasons = (by: Record<string, number | undefined>) => Object.entries(by).map(([k, n]) => `${k} ${n}`).join(', ');
  if (r.skipped) lines.push(`  skipped: ${reasons(r.skippedByReason)}`);
  if (r.rejected) lines.push(`  rejected: ${reasons(r.rejectedByReason)}`);
  for (const i of r.issues) lines.push(`  ${i.kind} ${i.reason}: ${i.message}`);
  if (r.issuesTruncated) lines.push('  (more issues not listed)');
  return lines.join('\n');
}

/**
 * While an import runs, SIGINT and SIGTERM stop it at the next chunk boundary instead of killing the
 * process part-way (the app then closes as usual: commitments of the stored chunks on disk, for the
 * anchorer). A repeated signal does not cut the chunk being written either; kill -9 does, and even
 * then a re-run completes the import.
 */
function stopOnSignal(service: CgmIngestService, bar: { done: () => void }): { readonly received?: 'SIGINT' | 'SIGTERM'; remove: () => void } {
  const state: { received?: 'SIGINT' | 'SIGTERM' } = {};
  const handler = (signal: 'SIGINT' | 'SIGTERM') => {
    bar.done();
    if (state.received) {
      process.stderr.write(`glucoguard: ${signal}: still finishing the chunk being written (kill -9 quits without waiting; running the command again completes the import)\n`);
      return;
    }
    state.received = signal;
    process.stderr.write(`glucoguard: ${signal}: stopping the import at the next chunk boundary\n`);
    void service.stop(`interrupted by ${signal}`);
  };
  const onInt = () => handler('SIGINT');
  const onTerm = () => handler('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  return {
    get received() {
      return state.received;
    },
    remove() {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
    },
  };
}

/** A one-line progress bar on stderr when it is a terminal; silent otherwise. */
function progressBar(): { update: (p: IngestProgress) => void; done: () => void } {
  const tty = process.stderr.isTTY === true;
  let shown = false;
  let last = 0;
  return {
    update(p) {
      if (!tty) return;
      const now = Date.now();
      if (now - last < 100) return;
      last = now;
      shown = true;
      const width = 30;
      let text: string;
      if (p.total) {
        const share = Math.min(1, p.stored / p.total);
        const filled = Math.round(share * width);
        text = `${p.phase.padEnd(9)} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(share * 100).toFixed(0).padStart(3)} %  ${p.stored}/${p.total}`;
      } else {
        text = `${p.phase.padEnd(9)} ${p.read} records read, ${p.stored} ${p.phase === 'storing' ? 'stored' : 'compared'}`;
      }
      process.stderr.write(`\r${text}\u001b[K`);
    },
    done() {
      if (shown) process.stderr.write('\r\u001b[K');
      shown = false;
    },
  };
}
