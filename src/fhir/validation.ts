/**
 * Validation of every write: base FHIR R4 (structure, cardinality, types, invariants as far as
 * @medplum/core checks them) plus each profile in `meta.profile` that profiles/ holds. Profiles
 * named in `meta.profile` but not held here are reported as a warning and otherwise ignored, as a
 * FHIR server that does not know a profile would.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { loadDataType, OperationOutcomeError, validateResource } from '@medplum/core';
import type { OperationOutcomeIssue, Resource, StructureDefinition } from '@medplum/fhirtypes';
import { unprocessable } from '../errors.js';
import { loadFhirDefinitions } from './definitions.js';

export class ProfileValidator {
  private readonly profiles = new Map<string, StructureDefinition>();

  /** Loads every StructureDefinition JSON file found under `dir` (recursively). */
  constructor(dir: string) {
    loadFhirDefinitions();
    for (const file of listJson(dir)) {
      const json = JSON.parse(readFileSync(file, 'utf8')) as Resource;
      if (json.resourceType !== 'StructureDefinition') continue;
      const sd = relaxResolveSlices(json as StructureDefinition);
      if (!sd.url) continue;
      // Extensions and data-type profiles must be known to the validator when a profile uses them.
      if (sd.kind !== 'resource' || sd.type === 'Extension') loadDataType(sd);
      this.profiles.set(sd.url, sd);
      if (sd.version) this.profiles.set(`${sd.url}|${sd.version}`, sd);
    }
  }

  /** Canonical URLs of the profiles held (without versions). */
  profileUrls(): string[] {
    return [...this.profiles.keys()].filter((k) => !k.includes('|'));
  }

  /** The profile with this canonical URL (optionally `|version`). */
  profile(url: string): StructureDefinition | undefined {
    return this.profiles.get(url);
  }

  /** Issues found (errors and warnings); empty when the resource is valid. Never throws for invalid input. */
  check(resource: Resource, extraProfiles: string[] = []): OperationOutcomeIssue[] {
    const issues: OperationOutcomeIssue[] = [];
    issues.push(...runValidator(resource));
    const wanted = new Set([...(resource.meta?.profile ?? []), ...extraProfiles]);
    for (const url of wanted) {
      const sd = this.profiles.get(url);
      if (!sd) {
        issues.push({ severity: 'warning', code: 'not-supported', diagnostics: `Profile ${url} is not known to this server; not validated against it` });
        continue;
      }
      issues.push(...runValidator(resource, sd).map((i) => ({ ...i, diagnostics: `${i.diagnostics ?? i.details?.text ?? ''} (profile ${sd.name ?? url})`.trim() })));
    }
    return issues;
  }

  /** Throws ERR_UNPROCESSABLE (422) listing every error issue with its expression path. */
  assertValid(resource: Resource, extraProfiles: string[] = []): void {
    const errors = this.check(resource, extraProfiles).filter((i) => i.severity === 'error' || i.severity === 'fatal');
    if (errors.length) throw unprocessable(errors);
  }
}

/**
 * Slices discriminated by `resolve()` (e.g. cgm-summary's hasMember slices, told apart by the code of
 * the referenced Observation) cannot be checked on one resource in isolation: the validator would
 * count every such slice as empty. Their minimum cardinality is relaxed to 0 so valid resources
 * pass; everything else in the profile is still enforced.
 */
function relaxResolveSlices(sd: StructureDefinition): StructureDefinition {
  const elements = sd.snapshot?.element;
  if (!elements) return sd;
  const slicedPaths = elements
    .filter((e) => e.slicing?.discriminator?.some((d) => d.path?.includes('resolve()')))
    .map((e) => e.id ?? e.path);
  if (slicedPaths.length === 0) return sd;
  const copy = structuredClone(sd);
  for (const element of copy.snapshot!.element!) {
    if (element.sliceName && slicedPaths.some((p) => element.id === `${p}:${element.sliceName}`)) element.min = 0;
  }
  return copy;
}

function runValidator(resource: Resource, profile?: StructureDefinition): OperationOutcomeIssue[] {
  try {
    return validateResource(resource, profile ? { profile } : undefined).map(normalize);
  } catch (err) {
    if (err instanceof OperationOutcomeError) return (err.outcome.issue ?? []).map(normalize);
    throw err;
  }
}

function normalize(issue: OperationOutcomeIssue): OperationOutcomeIssue {
  const diagnostics = issue.diagnostics ?? issue.details?.text;
  return {
    severity: issue.severity,
    code: issue.code,
    ...(diagnostics ? { diagnostics } : {}),
    ...(issue.expression ? { expression: issue.expression } : {}),
  };
}

function listJson(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listJson(full));
    else if (entry.name.endsWith('.json')) out.push(full);
  }
  return out;
}
