/**
 * `glucoguard patient-key status|guardians|recovery-start|recover`: the operator's side of a
 * patient's custodial key. The key is locked with the patient's password, so every command that
 * signs with it takes the patient's password from a file (`--password-file`, typed by the patient
 * at the desk, never on the command line or in the shell history); nothing here can sign for a
 * patient whose key is under their login without it.
 */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import type { App } from '../../app.js';
import { OPEN_ACCESS, type AccessContext } from '../../fhir/access.js';
import { verifyPassword } from '../../smart/passwords.js';
import type { GuardianTypedData } from './guardians.js';

const collect = (v: string, all: string[] = []): string[] => [...all, v];

/** The password in a file (first line; a trailing newline is not part of it). */
export function readPasswordFile(file: string): string {
  const password = readFileSync(file, 'utf8').split(/\r?\n/)[0] ?? '';
  if (!password) throw new InvalidArgumentError(`${file} is empty`);
  return password;
}

/** An access for in-process tools whose key session was opened with the patient's password. */
export async function sessionAccess(app: App, patientId: string, passwordFile: string | undefined): Promise<AccessContext & { grantId?: string }> {
  if (!passwordFile) return OPEN_ACCESS;
  const grantId = await app.consent.keys.openSession(patientId, readPasswordFile(passwordFile));
  return { ...OPEN_ACCESS, grantId };
}

export function registerPatientKeyCommands(program: Command, run: (fn: (app: App) => Promise<void>) => Promise<void>): void {
  const keys = program.command('patient-key').description("a patient's signing key: protection, backup, guardians, recovery");
  keys
    .command('status')
    .description('how the key is protected and whether it is backed up')
    .requiredOption('--patient <id>', 'Patient id')
    .action((o: { patient: string }) => run(async (app) => {
      const key = app.consent.keys.get(o.patient);
      if (!key) return console.log(`Patient/${o.patient} has no signing key yet`);
      const protection = await app.consent.keys.protection(o.patient);
      const guardians = await app.consent.guardians.current(o.patient);
      console.log(`address     ${key.address}`);
      console.log(`protection  ${protection!.protection === 'login' ? 'locked with the patient\'s password' : protection!.protection === 'server' ? 'server-held (moves under the password at the next sign-in)' : 'the patient\'s own wallet'}`);
      console.log(`recovery    ${protection!.recoveryCodeCreated ? `code made ${protection!.recoveryCodeCreated}` : 'no recovery code'}`);
      console.log(`guardians   ${guardians.threshold > 0 ? `${guardians.threshold} of ${guardians.guardians.map((g) => g.reference ?? g.address).join(', ')}` : 'none'}`);
      const waiting = app.consent.keys.pendingRecovery(o.patient);
      if (waiting) console.log(`recovering  to ${waiting} (waiting for the guardians' signatures)`);
    }));
  keys
    .command('guardians')
    .description("set the patient's guardians (addresses or RelatedPerson/ID, Practitioner/ID with a registered identity) and threshold")
    .requiredOption('--patient <id>', 'Patient id')
    .option('--guardian <address|reference>', 'a guardian (repeat for each)', collect, [])
    .requiredOption('--threshold <n>', 'how many guardians must sign a recovery (0 with no guardians)', (v) => Number.parseInt(v, 10))
    .option('--password-file <file>', "file holding the patient's password (needed when the key is locked with it)")
    .action((o: { patient: string; guardian: string[]; threshold: number; passwordFile?: string }) => run(async (app) => {
      const access = await sessionAccess(app, o.patient, o.passwordFile);
      const outcome = await app.consent.guardians.set(o.patient, o.guardian, o.threshold, access);
      if (outcome.state === 'done') console.log(`guardians set (tx ${outcome.txHash}): ${outcome.guardians.threshold} of ${outcome.guardians.guardians.map((g) => g.reference ?? g.address).join(', ') || 'none'}`);
      else console.log(`the patient's wallet must sign; typed data:\n${JSON.stringify(outcome.typedData, null, 2)}`);
    }));
  keys
    .command('recovery-start')
    .description('make a new key for the patient, locked with their (new) password, and print the Recover typed data the guardians sign')
    .requiredOption('--patient <id>', 'Patient id')
    .requiredOption('--username <name>', "the patient's sign-in name (the password is checked against it)")
    .requiredOption('--password-file <file>', "file holding the patient's current sign-in password")
    .action((o: { patient: string; username: string; passwordFile: string }) => run(async (app) => {
      const password = readPasswordFile(o.passwordFile);
      const user = app.smart.store.getUser(o.username);
      if (!user || user.fhirUser !== `Patient/${o.patient}` || !(await verifyPassword(password, user.passwordHash))) {
        throw new InvalidArgumentError(`the username and password do not belong to Patient/${o.patient}`);
      }
      const grantId = `cli-recovery-${Date.now()}`;
      await app.consent.keys.sessions.put(grantId, app.consent.keys.pseudonym(o.patient), await app.consent.keys.deriveUnlock(o.patient, password), 5 * 60_000);
      const { newKey, threshold, typedData } = await app.consent.guardians.startRecovery(o.patient, { kind: 'open', grantId });
      await app.consent.keys.sessions.drop(grantId);
      console.error(`new key ${newKey}: ${threshold} guardian signature(s) of the typed data below are needed (glucoguard patient-key recover)`);
      console.log(JSON.stringify(typedData, null, 2));
    }));
  keys
    .command('recover')
    .description("relay the guardians' signatures of the Recover typed data; the new key becomes the patient's key")
    .requiredOption('--patient <id>', 'Patient id')
    .requiredOption('--typed-data <file>', 'the typed data printed by recovery-start')
    .option('--signature <0x…>', "a guardian's signature (repeat for each)", collect, [])
    .action((o: { patient: string; typedData: string; signature: string[] }) => run(async (app) => {
      const typedData = JSON.parse(readFileSync(o.typedData, 'utf8')) as GuardianTypedData;
      const { address, txHash } = await app.consent.guardians.recover(o.patient, o.signature, typedData);
      await app.consent.decisions.changed();
      console.log(`Patient/${o.patient} now signs with ${address} (tx ${txHash})`);
    }));
}
