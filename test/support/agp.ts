/** `$cgm-agp`'s Parameters (src/cgm/agp.ts agpParameters) read back as a plain object, for tests. */
import type { Parameters, ParametersParameter } from '@medplum/fhirtypes';

export interface AgpAnswer {
  patient: string;
  startTime: string;
  endTime: string;
  startDate: string;
  endDate: string;
  unit: string;
  binMinutes: number;
  readings: number;
  bins: { time: string; minute: number; n: number; p5?: number; p25?: number; p50?: number; p75?: number; p95?: number; mean?: number }[];
}

function plain(parameters: ParametersParameter[] = []): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const p of parameters) {
    if (p.name === 'bin') (out.bins as unknown[] | undefined ?? (out.bins = [] as unknown[]) as unknown[]).push(plain(p.part));
    else {
      const key = Object.keys(p).find((k) => k.startsWith('value')) as keyof ParametersParameter | undefined;
      const value = key ? p[key] : undefined;
      out[p.name!] = key === 'valueReference' ? (value as { reference?: string }).reference : value;
    }
  }
  return out;
}

export function agpOf(body: unknown): AgpAnswer {
  const parameters = body as Parameters;
  if (parameters.resourceType !== 'Parameters') throw new Error(`$cgm-agp answered ${String(parameters.resourceType)}, not Parameters`);
  return plain(parameters.parameter) as unknown as AgpAnswer;
}
