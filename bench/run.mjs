// `npm run bench`: runs each benchmark suite compiled into dist/bench/ and prints measured figures.
// Select suites with BENCH=fhir-search,cgm (default: all). Results also go to bench/out/results.json.
import { mkdirSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import path from 'node:path';

const SUITES = ['fhir-search', 'cgm', 'smart', 'chain-node', 'chain', 'consent', 'exchange', 'soak'];
const wanted = process.env.BENCH ? process.env.BENCH.split(',') : SUITES;
const results = {};
for (const suite of wanted) {
  const file = path.resolve('dist/bench', `${suite}.js`);
  let mod;
  try {
    mod = await import(pathToFileURL(file).href);
  } catch (err) {
    console.log(`\n== ${suite}: not available (${err.code ?? err.message})`);
    continue;
  }
  console.log(`\n== ${suite}`);
  const started = Date.now();
  results[suite] = await mod.run((line) => console.log(`  ${line}`));
  console.log(`  (suite took ${((Date.now() - started) / 1000).toFixed(1)} s)`);
}
mkdirSync('bench/out', { recursive: true });
writeFileSync('bench/out/results.json', JSON.stringify({ at: new Date().toISOString(), node: process.version, results }, null, 2));
console.log('\nresults written to bench/out/results.json');
process.exit(0);
