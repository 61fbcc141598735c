/**
 * `glucoguard export` runs a bulk export on the server's data directory — as a registered client
 * would see it (`--client ID`, its registered scopes, `--purpose`, `--as` identity; every guard and
 * consent decision applies, research purposes are de-identified) or, without `--client`, with
 * operator (open) access — writes the files, decrypted, into `--out <dir>` (default
 * `./glucoguard-export-<job>`, mode 0700/0600) and prints the manifest with their paths. The copies
 * in the data directory stay sealed and are deleted with the job when its retention has passed.
 * `glucoguard exchange status` lists export jobs and Subscriptions with their state.
 */
import { createWriteStream, mkdirSync } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Command, InvalidArgumentError } from 'commander';
import type { App } from '../app.js';
import { withApp, type OpenApp } from '../cli-app.js';
import { OPEN_ACCESS, type AccessContext } from '../fhir/access.js';
import { isSupportedType } from '../fhir/resource-types.js';
import type { OutputFile } from './jobs.js';

const list = (v: string): string[] => v.split(',').map((s) => s.trim()).filter(Boolean);
const instant = (v: string): string => {
  if (Number.isNaN(Date.parse(v))) throw new InvalidArgumentError('expected a date (YYYY-MM-DD) or date-time');
  return new Date(v).toISOString();
};

interface ExportOptions {
  client?: string;
  as?: string;
  purpose?: string;
  type?: string[];
  since?: string;
  group?: string;
  patients?: boolean;
  out?: string;
}

/** The access a registered client would have with its registered scopes (no token involved). */
export function clientAccess(app: App, clientId: string, as: string | undefined, purpose: string | undefined): AccessContext & { purposeOfUse?: string } {
  const client = app.smart.store.getClient(clientId);
  if (!client) throw new InvalidArgumentError(`unknown client "${clientId}"`);
  return {
    kind: 'token', clientId, subject: clientId, scopes: [...client.scopes],
    ...(as ? { fhirUser: as } : {}), ...(purpose ? { purposeOfUse: purpose } : {}),
  };
}

export function registerExchangeCommands(program: Command, open: OpenApp): void {
  program
    .command('export')
    .description('run a bulk export ($export) now, write its files (decrypted) to --out and print the manifest')
    .option('--client <client_id>', 'export as this registered client would (its scopes and consent grants); default: operator, everything')
    .option('--as <reference>', 'the identity the client acts as (e.g. Organization/ID, the grantee of a research consent)')
    .option('--purpose <code>', 'purpose of use (e.g. TREAT, HRESCH — research exports are de-identified)')
    .option('--type <types>', 'resource types, comma-separated', list)
    .option('--since <instant>', 'only resources changed after this instant', instant)
    .option('--group <id>', 'export the members of this Group')
    .option('--patients', 'Patient-level export (patient compartment types only)')
    .option('--out <dir>', 'directory the NDJSON files are written to, in clear (default ./glucoguard-export-<job id>)')
    .action((o: ExportOptions) => withApp(open, async (app) => {
        // loaded with the app by now; imported here so that --help and usage errors load neither
        const { DEFAULT_EXPORT_TYPES } = await import('./export.js');
        const { GuardedReader } = await import('./reader.js');
        const { researchContextOf } = await import('./research.js');
        const access = o.client ? clientAccess(app, o.client, o.as, o.purpose) : OPEN_ACCESS;
        const level = o.group ? 'group' : o.patients ? 'patient' : 'system';
        // as at the kick-off (export.ts): a research export's cohort is whoever granted the study;
        // a Group of chosen patients would tie their pseudonyms to them, whoever runs the export
        if (level === 'group' && researchContextOf(access)) {
          throw new InvalidArgumentError('a research export covers the patients who granted the study (--patients); a Group of chosen patients would tie their pseudonyms to them');
        }
        for (const t of o.type ?? []) if (!isSupportedType(t)) throw new InvalidArgumentError(`unsupported resource type "${t}"`);
        let types = o.type?.length ? o.type : DEFAULT_EXPORT_TYPES;
        if (level !== 'system') types = types.filter((t) => GuardedReader.isPatientLinked(t));
        types = await app.exchange.exports.authorizedTypes(access, types, !!o.type?.length);
        const job = app.exchange.exports.submit(access, {
          level, ...(o.group ? { groupId: o.group } : {}), types, explicitTypes: !!o.type?.length, ...(o.since ? { since: o.since } : {}), typeFilters: {},
        }, `glucoguard export${process.argv.slice(3).map((a) => ` ${a}`).join('')}`);
        const done = await app.exchange.exports.whenDone(job.id);
        if (!done || done.status !== 'completed') {
          console.error(`glucoguard: export ${job.id} ${done?.status ?? 'cancelled'}${done?.failure ? `: ${done.failure}` : ''}`);
          process.exitCode = 1;
          return;
        }
        const out = path.resolve(o.out ?? `glucoguard-export-${done.id}`);
        mkdirSync(out, { recursive: true, mode: 0o700 });
        const written = async (f: OutputFile) => {
          const target = path.join(out, f.file);
          await pipeline(app.exchange.exports.openFile(done.id, f.file), createWriteStream(target, { mode: 0o600 }));
          return { type: f.type, count: f.count, file: target };
        };
        const output = [];
        for (const f of done.outputs) output.push(await written(f));
        const error = [];
        for (const f of done.errors) error.push(await written(f));
        console.log(JSON.stringify({ job: done.id, transactionTime: done.transactionTime, output, error }, null, 2));
    }));

  const exchange = program.command('exchange').description('bulk export jobs and subscriptions');
  exchange
    .command('status')
    .description('list export jobs and Subscriptions with their state')
    .option('--json', 'print JSON')
    .action((o: { json?: boolean }) => withApp(open, async (app) => {
        const jobs = app.exchange.exports.store.all().map((j) => ({
          id: j.id, status: j.withdrawnAt ? 'withdrawn' : j.status, level: j.params.level, types: j.params.types.join(','), created: j.createdAt,
          requester: j.access.clientId ?? j.access.kind, resources: j.outputs.reduce((n, f) => n + f.count, 0), ...(j.failure ? { failure: j.failure } : {}),
        }));
        const subs = app.exchange.subscriptions.list().map((s) => ({
          id: s.id, status: s.status, topic: s.topic, ...(s.patient ? { patient: s.patient } : {}), payload: s.payload,
          endpoint: new URL(s.endpoint).origin, requester: s.access.clientId ?? s.access.kind, events: s.events, withheld: s.withheld,
          failedDeliveries: s.failedDeliveries, ...(s.lastDeliveryAt ? { lastDelivery: s.lastDeliveryAt } : {}), ...(s.lastError ? { error: s.lastError } : {}),
        }));
        if (o.json) {
          console.log(JSON.stringify({ jobs, subscriptions: subs }, null, 2));
          return;
        }
        console.log(`Export jobs (${jobs.length})`);
        for (const j of jobs) console.log(`  ${j.id}  ${j.status.padEnd(9)} ${j.level.padEnd(7)} ${j.types}  ${j.resources} resources  by ${j.requester}  ${j.created}${j.failure ? `  (${j.failure})` : ''}`);
        console.log(`Subscriptions (${subs.length})`);
        for (const s of subs) console.log(`  ${s.id}  ${s.status.padEnd(9)} ${s.topic.split('/').pop()} ${s.patient ? `Patient/${s.patient} ` : ''}${s.payload} → ${s.endpoint}  events ${s.events}, withheld ${s.withheld}, failed deliveries ${s.failedDeliveries}${s.error ? `  (${s.error})` : ''}`);
    }));
}
