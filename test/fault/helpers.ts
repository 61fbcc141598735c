/** Shared pieces of the fault tests: small Nightscout exports, ingest and read-back over HTTP. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Bundle, Observation, OperationOutcome } from '@medplum/fhirtypes';

export const FIVE_MIN = 5 * 60_000;
/** Fixed base URL so token iss/aud and links are known before the server picks its port. */
export const BASE_URL = 'http://127.0.0.1:8080';
export const INTEGRITY_TAG_SYSTEM = 'urn:glucoguard:integrity';

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), prefix));
}

export interface SentReading {
  /** ISO instant as the proxy stores it (effectiveDateTime, no milliseconds). */
  at: string;
  mgdl: number;
}

/** `n` Nightscout sgv entries 5 minutes apart from `startMs`, values derived from the index. */
export function nightscout(n: number, startMs: number): { body: string; readings: SentReading[] } {
  const entries = [];
  const readings: SentReading[] = [];
  for (let i = 0; i < n; i++) {
    const date = startMs + i * FIVE_MIN;
    const sgv = 70 + ((i * 37 + Math.floor(startMs / FIVE_MIN)) % 200);
    const iso = new Date(date).toISOString();
    entries.push({ type: 'sgv', sgv, date, dateString: iso, device: 'fault-test-cgm' });
    readings.push({ at: iso.replace('.000Z', 'Z'), mgdl: sgv });
  }
  return { body: JSON.stringify(entries), readings };
}

export async function ingest(origin: string, patient: string, body: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${origin}/cgm/ingest?format=nightscout&patient=${patient}`, {
    method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body,
  });
}

/** Every glucose Observation of the patient, following `next` links (pages of 1000). */
export async function observationsOf(origin: string, patient: string, headers: Record<string, string> = {}): Promise<Observation[]> {
  const out: Observation[] = [];
  let url: string | undefined = `${origin}/fhir/Observation?patient=${patient}&code=http://loinc.org|99504-3&_count=1000`;
  while (url) {
    const res = await fetch(url, { headers });
    if (res.status !== 200) throw new Error(`search answered ${res.status}: ${await res.text()}`);
    const bundle = (await res.json()) as Bundle<Observation>;
    out.push(...(bundle.entry ?? []).map((e) => e.resource!));
    const next = bundle.link?.find((l) => l.relation === 'next')?.url;
    // Links carry the public base URL; the test talks to the process on its own port.
    url = next ? `${origin}${new URL(next).pathname}${new URL(next).search}` : undefined;
  }
  return out;
}

/** The reading an Observation carries, or undefined when a part of it is missing (half-written). */
export function readingOf(o: Observation): SentReading | undefined {
  const complete = o.resourceType === 'Observation' && typeof o.id === 'string' && o.status === 'final'
    && o.code?.coding?.some((c) => c.system === 'http://loinc.org' && c.code === '99504-3')
    && typeof o.subject?.reference === 'string' && typeof o.effectiveDateTime === 'string'
    && typeof o.valueQuantity?.value === 'number' && o.valueQuantity.code === 'mg/dL';
  return complete ? { at: o.effectiveDateTime!, mgdl: o.valueQuantity!.value! } : undefined;
}

export function integrityTag(o: { meta?: { tag?: { system?: string; code?: string }[] } }): string | undefined {
  return o.meta?.tag?.find((t) => t.system === INTEGRITY_TAG_SYSTEM)?.code;
}

/** An OperationOutcome a client may see: no stack, no file paths, no driver or socket detail. */
export function expectCleanOutcome(body: unknown): OperationOutcome {
  const outcome = body as OperationOutcome;
  if (outcome.resourceType !== 'OperationOutcome') throw new Error(`expected an OperationOutcome, got ${JSON.stringify(body).slice(0, 300)}`);
  const text = JSON.stringify(outcome);
  for (const leak of [/ECONNREFUSED/i, /ENOSPC/i, /SQLITE/i, /\bat \S+ \(/, /node_modules/, /\/tmp\//, /127\.0\.0\.1:\d+/, /stack/i]) {
    if (leak.test(text)) throw new Error(`OperationOutcome leaks internals (${leak}): ${text}`);
  }
  return outcome;
}

export async function getJson(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: unknown }> {
  return responseOf(await fetch(url, { headers }));
}

/** Status and body (parsed when JSON) of a response. */
export async function responseOf(res: Response): Promise<{ status: number; body: unknown }> {
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text for the assertion message
  }
  return { status: res.status, body };
}

/** Value of a Prometheus gauge/counter line (without labels beyond `service`), or undefined. */
export async function metric(origin: string, name: string): Promise<number | undefined> {
  const text = await (await fetch(`${origin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
  return line ? Number(line.split(' ').pop()) : undefined;
}
