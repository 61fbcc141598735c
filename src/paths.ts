/** Where the package's own files (profiles/, smart-on-fhir/, chain/) live, from src/ or from dist/src/. */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findPackageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'profiles'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('cannot find the GlucoGuard package root');
    dir = parent;
  }
}

export const PACKAGE_ROOT = findPackageRoot();
export const PROFILES_DIR = path.join(PACKAGE_ROOT, 'profiles');
/** The package's version (package.json). */
export const VERSION: string = (JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
