// Indexing the FHIR R4 StructureDefinitions into @medplum/core as the server does at start, from the
// slim copies the build writes (dist/definitions) or from the originals: ms to parse, ms to index,
// RSS before and after. One way per process (the index is global); run both, taking turns:
//   node --expose-gc bench/probes/definitions-load.mjs            (slim copies)
//   FROM=original node --expose-gc bench/probes/definitions-load.mjs
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const dist = path.resolve(process.env.D ?? 'dist');
const { STRUCTURE_BUNDLES, readStructureBundle } = await import(pathToFileURL(path.join(dist, 'src/fhir/definitions.js')).href);
const { indexStructureDefinitionBundle } = await import('@medplum/core');
const from = process.env.FROM ?? 'slim';
// a directory with no slim copy in it makes readStructureBundle read the original
const dir = from === 'original' ? path.join(dist, 'no-such-directory') : path.join(dist, 'definitions');
const mb = (n) => (n / 1048576).toFixed(0);
global.gc?.();
const rss0 = process.memoryUsage().rss;
let t = performance.now();
const bundles = STRUCTURE_BUNDLES.map((name) => readStructureBundle(name, dir));
const parseMs = performance.now() - t;
t = performance.now();
for (const bundle of bundles) indexStructureDefinitionBundle(bundle);
const indexMs = performance.now() - t;
console.log(`${from}: read and parse ${parseMs.toFixed(0)} ms, index ${indexMs.toFixed(0)} ms; RSS ${mb(rss0)} -> ${mb(process.memoryUsage().rss)} MB`);
