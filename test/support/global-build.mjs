// Jest globalSetup: builds dist/ once, before any test file runs. Test files that spawn the compiled
// `glucoguard` (CLI, fault and crash tests) also build in their beforeAll; on a fresh clone two such
// files used to run the first, full build at the same time in the two workers, and one spawned the bin
// while the other's tsc was still rewriting its modules (CI, session 14: "does not provide an export
// named …" from a half-written file). After this build their builds emit nothing (tsc is incremental),
// so nothing is rewritten under a running process. A failed build is left for those files to report.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export default function globalBuild() {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
  const build = spawnSync(process.execPath, [path.join(root, 'scripts/build.mjs')], { cwd: root, encoding: 'utf8' });
  if (build.status !== 0) console.warn(`\nbuild before the tests exited with ${build.status}; the tests that run dist/ will report it`);
}
