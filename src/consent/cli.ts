/**
 * `glucoguard consent grant|revoke|list`, `glucoguard identity register|list|remove|patient-wallet`
 * and `glucoguard audit --patient ID`. Operator tools on the same data directory and chain as the
 * server; a grant made here is signed with the patient's custodial key, exactly as through the API.
 * A key locked with the patient's password (every patient who signed in once) needs that password:
 * `--password-file` (the patient types it into a file at the desk); without it the command is refused
 * and nothing is recorded. See docs/patient-keys.md.
 */
import type { AuditEvent, Consent } from '@medplum/fhirtypes';
import { Operator } from '@medplum/core';
import { Command, InvalidArgumentError, Option } from 'commander';
import { getAddress, isAddress, Wallet } from 'ethers';
import type { App } from '../app.js';
import { UsageError, withApp, type OpenApp } from '../cli-app.js';
import { GlucoGuardError } from '../errors.js';
import { OPEN_ACCESS } from '../fhir/access.js';
import { resourceExists } from '../repository/exists.js';
import { registerPatientKeyCommands, sessionAccess } from './keys/cli.js';
import { CLIENT_SYSTEM, GRANT_ID_SYSTEM, PURPOSE_SYSTEM, RESOURCE_TYPE_SYSTEM } from './terms.js';

/** FHIR date: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`. */
const FHIR_DATE = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/;
/** A date-time with seconds optional and its offset required (FHIR dateTime: "if hours and minutes are specified, a timezone offset SHALL be populated"). */
const DATE_TIME = /^(\d{4}-\d{2}-\d{2})T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})$/;
const isCalendarDay = (ymd: string): boolean => !Number.isNaN(Date.parse(`${ymd}T00:00:00Z`)) && new Date(`${ymd}T00:00:00Z`).toISOString().slice(0, 10) === ymd;

/**
 * A date (`YYYY-MM-DD`, or `YYYY-MM`, `YYYY`; kept as given: as a period's end it includes that
 * whole day, month or year) or a date-time with its offset (as an instant). Nothing else: Date.parse
 * alone took "March 7" for 2001-03-07 (a data period 25 years wider than meant), a time without an
 * offset in the operator's own time zone, and 2026-02-30 for 2 March.
 */
const instant = (v: string): string => {
  const date = FHIR_DATE.exec(v);
  if (date) {
    if (!isCalendarDay(`${date[1]}-${date[2] ?? '01'}-${date[3] ?? '01'}`)) throw new InvalidArgumentError(`${v} is not a date`);
    return v;
  }
  const dateTime = DATE_TIME.exec(v);
  if (!dateTime || !isCalendarDay(dateTime[1]!) || Number.isNaN(Date.parse(v))) {
    throw new InvalidArgumentError('expected a date (YYYY-MM-DD, YYYY-MM or YYYY) or a date-time with its offset (2026-01-14T10:00:00Z, 2026-01-14T10:00:00+01:00)');
  }
  return new Date(v).toISOString();
};
const list = (v: string): string[] => v.split(',').map((s) => s.trim()).filter(Boolean);

export interface GrantOptions {
  patient: string;
  to: string;
  dataFrom: string;
  dataTo: string;
  until: string;
  from?: string;
  purpose: string[];
  types?: string[];
  codes?: string[];
}

/** The Consent a `consent grant` command stands for. */
export function consentFromOptions(o: GrantOptions, now = Date.now()): Consent {
  return {
    resourceType: 'Consent',
    status: 'active',
    scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
    category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
    patient: { reference: `Patient/${o.patient}` },
    performer: [{ reference: `Patient/${o.patient}` }],
    dateTime: new Date(now).toISOString(),
    provision: {
      type: 'permit',
      period: { start: o.from ?? new Date(now).toISOString(), end: o.until },
      actor: [{
        role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] },
        reference: o.to.startsWith('Client/') ? { identifier: { system: CLIENT_SYSTEM, value: o.to.slice('Client/'.length) } } : { reference: o.to },
      }],
      action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'access' }] }],
      purpose: o.purpose.map((code) => ({ system: PURPOSE_SYSTEM, code })),
      ...(o.types?.length ? { class: o.types.map((code) => ({ system: RESOURCE_TYPE_SYSTEM, code })) } : {}),
      ...(o.codes?.length ? { code: o.codes.map((c) => { const [system, code] = c.split('|'); return { coding: [{ system, code }] }; }) } : {}),
      dataPeriod: { start: o.dataFrom, end: o.dataTo },
    },
  };
}

/** The grantee as `consent grant --to` takes it: a reference, or `Client/<client_id>` for a registered client (kept as an identifier). */
function grantee(c: Consent): string {
  const ref = c.provision?.actor?.[0]?.reference;
  if (ref?.reference) return ref.reference;
  if (ref?.identifier?.system === CLIENT_SYSTEM && ref.identifier.value) return `Client/${ref.identifier.value}`;
  return ref?.identifier?.value ? `${ref.identifier.system ?? '?'}|${ref.identifier.value}` : '?';
}

/** One readable line per Consent. */
export function formatConsent(c: Consent, now = Date.now()): string {
  const p = c.provision;
  // an active Consent whose access period is over grants nothing: said so (the resource keeps `active`)
  const ended = c.status === 'active' && p?.period?.end !== undefined && Date.parse(p.period.end) <= now;
  return [c.id, ended ? 'active (ended)' : c.status, grantee(c), `access ${p?.period?.start ?? '?'} → ${p?.period?.end ?? '?'}`,
    `data ${p?.dataPeriod?.start ?? '?'} → ${p?.dataPeriod?.end ?? '?'}`, `purpose ${(p?.purpose ?? []).map((x) => x.code).join(',')}`,
    `grant ${c.identifier?.find((i) => i.system === GRANT_ID_SYSTEM)?.value ?? '-'}`].join('  ');
}

/** One readable line per AuditEvent: when, who, what, outcome, purpose, grants. */
export function formatAuditEvent(e: AuditEvent): string {
  const who = e.agent.find((a) => a.requestor)?.who;
  const client = e.agent.find((a) => !a.requestor)?.who?.identifier?.value;
  const what = e.entity?.find((x) => x.role?.code === '4')?.what?.reference
    ?? (e.entity?.find((x) => x.query) ? `query ${Buffer.from(e.entity.find((x) => x.query)!.query!, 'base64').toString('utf8')}` : '');
  const grants = (e.entity ?? []).filter((x) => x.what?.identifier?.system === GRANT_ID_SYSTEM).map((x) => x.what!.identifier!.value);
  const outcome = e.outcome === '0' ? 'permitted' : e.outcome === '4' ? 'DENIED/not found' : 'FAILED';
  return [e.recorded, who?.reference ?? who?.display ?? '?', client ? `(client ${client})` : '', e.subtype?.[0]?.code ?? e.action ?? '', what,
    outcome, e.outcomeDesc ? `[${e.outcomeDesc}]` : '', e.purposeOfEvent?.[0]?.coding?.[0]?.code ? `purpose ${e.purposeOfEvent[0].coding[0].code}` : '',
    grants.length ? `grant ${grants.join(',')}` : ''].filter(Boolean).join('  ');
}

/**
 * The Consent elements `consent grant` makes of its options, and how to say a refusal of each in the
 * options' words: the operator gave --until, not provision.period.
 */
const OPTION_WORDS: Record<string, (o: GrantOptions) => string> = {
  // refused for ending before its start, or for being over already
  'Consent.provision.period': (o) => `--until must be later than ${o.from ? '--from and later than now' : 'now'}`,
  'Consent.provision.dataPeriod': () => '--data-to must not be before --data-from',
};

/** Why the service refused the Consent made of the options, naming the options where it can. */
function inOptionWords(err: GlucoGuardError, o: GrantOptions): string {
  const said = err.issues.map((i) => OPTION_WORDS[i.expression?.[0] ?? '']?.(o) ?? i.diagnostics).filter((d): d is string => Boolean(d));
  return said.length ? [...new Set(said)].join('; ') : err.message;
}

export function registerConsentCommands(program: Command, open: OpenApp): void {
  const run = (fn: (app: App) => Promise<void>): Promise<void> => withApp(open, fn);
  // `withoutData`: what the command's input is refused with on a directory holding no installation (cli-app.ts)
  const setUp = (withoutData: Error, fn: (app: App) => Promise<void>): Promise<void> => withApp(() => open({ setUp: true, withoutData }), fn);

  const consent = program.command('consent').description('patient consents recorded on chain');
  consent
    .command('grant')
    .description("grant a practitioner, care team, organisation, relative (RelatedPerson), device or registered client access to a patient's data (signed with the patient's custodial key)")
    .requiredOption('--patient <id>', 'Patient id')
    .requiredOption('--to <reference>', 'grantee: Practitioner/ID, PractitionerRole/ID, CareTeam/ID, Organization/ID, RelatedPerson/ID, Device/ID or Client/<client_id> (must have a registered identity)')
    .requiredOption('--data-from <date>', 'first instant of data the grantee may read', instant)
    .requiredOption('--data-to <date>', 'last day (included whole) or instant of data the grantee may read', instant)
    .requiredOption('--until <date>', 'end of the access window (a day: included whole)', instant)
    .option('--from <date>', 'start of the access window (default now)', instant)
    .addOption(new Option('--purpose <codes>', 'v3 PurposeOfUse codes, comma-separated').argParser(list).default(['TREAT'], 'TREAT'))
    .option('--types <types>', 'resource types, comma-separated (default all)', list)
    .option('--codes <codes>', 'system|code list, comma-separated (e.g. http://loinc.org|99504-3)', list)
    .option('--password-file <file>', "file holding the patient's password (needed when their key is locked with it)")
    .action((o: GrantOptions & { passwordFile?: string }) => setUp(new UsageError(`Patient/${o.patient} not found`), async (app) => {
      const access = await sessionAccess(app, o.patient, o.passwordFile);
      // the Consent is made of the options alone: one the service refuses as invalid was given wrongly (exit 2)
      const outcome = await app.consent.service.grant(consentFromOptions(o), access).catch((err: unknown) => {
        throw err instanceof GlucoGuardError && (err.code === 'ERR_INVALID' || err.code === 'ERR_UNPROCESSABLE') ? new UsageError(inOptionWords(err, o)) : err;
      });
      if (outcome.state === 'done') console.log(formatConsent(outcome.consent));
      else console.log(`${outcome.consent.id} awaits the patient's wallet signature; typed data:\n${JSON.stringify(outcome.typedData, null, 2)}`);
    }));
  consent
    .command('revoke')
    .description('revoke an active Consent (on chain first, then the Consent becomes inactive)')
    .requiredOption('--consent <id>', 'Consent id')
    .option('--password-file <file>', "file holding the patient's password (needed when their key is locked with it)")
    .action((o: { consent: string; passwordFile?: string }) => run(async (app) => {
      // an unknown --consent, or one that is not active, was given wrongly (exit 2), as grant's options are
      const asUsage = (err: unknown): never => {
        throw err instanceof GlucoGuardError && ['ERR_NOT_FOUND', 'ERR_INVALID', 'ERR_UNPROCESSABLE'].includes(err.code) ? new UsageError(err.message) : err;
      };
      const patient = o.passwordFile ? (await app.repository.read<Consent>('Consent', o.consent).catch(asUsage)).patient?.reference?.split('/')[1] ?? '' : '';
      const access = o.passwordFile ? await sessionAccess(app, patient, o.passwordFile) : OPEN_ACCESS;
      const outcome = await app.consent.service.revoke(o.consent, access).catch(asUsage);
      console.log(outcome.state === 'done' ? formatConsent(outcome.consent) : `awaits the wallet signature:\n${JSON.stringify(outcome.typedData, null, 2)}`);
    }));
  consent
    .command('list')
    .description("a patient's Consents")
    .requiredOption('--patient <id>', 'Patient id')
    .action((o: { patient: string }) => run(async (app) => {
      // a mistyped id would otherwise read as "no Consents" (exit 0)
      if (!(await resourceExists(app.repository, 'Patient', o.patient))) throw new InvalidArgumentError(`Patient/${o.patient} not found`);
      for (const c of await app.consent.service.list(o.patient)) console.log(formatConsent(c));
    }));

  registerPatientKeyCommands(program, run);

  const identity = program.command('identity').description('grantee and patient identities in the IdentityRegistry');
  identity
    .command('register')
    .description('register an address for a stored Practitioner/Organization/RelatedPerson/CareTeam/Device or a registered client (Client/<client_id>)')
    .requiredOption('--ref <reference>', 'e.g. Practitioner/7 or Client/my-app')
    .option('--address <0x…>', 'address to register (default: a new random one, printed)')
    .action(async (o: { ref: string; address?: string }) => {
      if (!/^(Practitioner|PractitionerRole|Organization|RelatedPerson|CareTeam|Device|Client)\/[A-Za-z0-9\-._~]{1,64}$/.test(o.ref)) {
        throw new InvalidArgumentError('--ref must look like Practitioner/ID or Client/CLIENT_ID');
      }
      if (o.address && !isAddress(o.address)) throw new InvalidArgumentError('--address must be an Ethereum address');
      // an identity for an id no resource or client holds would pass, with every grant made to it, to
      // whoever is created (or registered as a client) with that id; refused as a wrong --ref (exit 2)
      const [type, id] = o.ref.split('/') as [string, string];
      const notThere = new InvalidArgumentError(type === 'Client' ? `${o.ref} is not a registered client (see glucoguard clients list)` : `${o.ref} not found`);
      await setUp(notThere, async (app) => {
        // a disabled client is still registered: enabled again, its identity and grants hold again
        if (type === 'Client' ? !app.smart.store.findClient(id) : !(await resourceExists(app.repository, type, id))) throw notThere;
        const address = o.address ? getAddress(o.address) : Wallet.createRandom().address;
        const { txHash } = await app.consent.identity.registerGrantee(o.ref, address);
        console.log(`${o.ref} ${address} (tx ${txHash})`);
      });
    });
  identity
    .command('list')
    .description('addresses registered for a reference')
    .requiredOption('--ref <reference>', 'e.g. Practitioner/7')
    .action((o: { ref: string }) => run(async (app) => {
      for (const a of await app.consent.identity.granteesOf(o.ref)) console.log(a);
    }));
  identity
    .command('remove')
    .description('remove a grantee address (its grants stop working at once)')
    .requiredOption('--address <0x…>', 'address')
    .action((o: { address: string }) => run(async (app) => {
      await app.consent.identity.removeGrantee(o.address);
      await app.consent.decisions.changed();
      console.log(`removed ${getAddress(o.address)}`);
    }));
  identity
    .command('patient-wallet')
    .description("register the address of a patient's own wallet (non-custodial signing)")
    .requiredOption('--patient <id>', 'Patient id')
    .requiredOption('--address <0x…>', 'wallet address')
    .action((o: { patient: string; address: string }) => run(async (app) => {
      const key = await app.consent.keys.registerWallet(o.patient, o.address);
      console.log(`Patient/${o.patient} signs with ${key.address}`);
    }));

  program
    .command('audit')
    .description("a patient's access log: every access to their data, permitted or denied")
    .requiredOption('--patient <id>', 'Patient id')
    .option('--json', 'print the AuditEvents as JSON')
    .action((o: { patient: string; json?: boolean }) => run(async (app) => {
      const result = await app.repository.search({
        resourceType: 'AuditEvent', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${o.patient}` }],
        sortRules: [{ code: 'date', descending: false }], count: 10_000, offset: 0,
      });
      const events = result.resources as AuditEvent[];
      if (o.json) console.log(JSON.stringify(events, null, 2));
      else for (const e of events) console.log(formatAuditEvent(e));
      if (!events.length) console.error(`no AuditEvent names Patient/${o.patient}`); // stdout stays the (empty) log
    }));
}
