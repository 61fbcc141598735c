// Build step behind `npm run build` / `npm start`: compile contracts (when chain/compile.mjs exists)
// then TypeScript, then the slim FHIR definition bundles. tsc is incremental, so an unchanged tree
// builds in a few seconds.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

function run(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
if (existsSync('chain/compile.mjs')) run(process.execPath, ['chain/compile.mjs']);
run(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json']);
// slim copies of the FHIR StructureDefinition bundles the server indexes at start (src/fhir/definitions.ts)
run(process.execPath, ['--input-type=module', '-e', "(await import('./dist/src/fhir/definitions.js')).writeSlimDefinitions()"]);
