// The hashing any check of a patient-day must do, without looking anything up: 288 leaves (SHA-256 of salt ‖ a ~700-character
// canonical text, src/ledger/canonical.js commitmentOf), the same as bare SHA-256 of ready buffers, and the root of those 288
// neighbouring leaves in a 1,000-leaf batch tree (src/ledger/merkle.js rootOfLeaves). Five rounds of 100; ms per patient-day.
import { randomBytes, hash } from 'node:crypto';
import { D } from './kept-store.mjs';
const { commitmentOf } = await import(`${D}/src/ledger/canonical.js`);
const { buildMerkleTree, rootOfLeaves } = await import(`${D}/src/ledger/merkle.js`);
const texts = Array.from({ length: 288 }, (_, i) => JSON.stringify({ resourceType: 'Observation', id: `reading-${i}`, pad: 'a'.repeat(650) }));
const salts = Array.from({ length: 1000 }, () => randomBytes(32));
const leaves = salts.map((s, i) => commitmentOf(s, texts[i % 288]));
const nodes = buildMerkleTree(leaves).nodes();
const buffers = texts.map((t) => Buffer.from(t));
const known = Array.from({ length: 288 }, (_, i) => ({ index: 300 + i, leaf: leaves[300 + i] }));
const time = (f) => { const t = performance.now(); for (let k = 0; k < 100; k++) f(); return (performance.now() - t) / 100; };
for (let round = 0; round < 5; round++) {
  const leafMs = time(() => { for (let i = 0; i < 288; i++) commitmentOf(salts[300 + i], texts[i]); });
  const bareMs = time(() => { for (let i = 0; i < 288; i++) hash('sha256', buffers[i], 'buffer'); });
  const treeMs = time(() => rootOfLeaves(1000, nodes, known));
  console.log(`288 leaves ${leafMs.toFixed(3)} ms (bare SHA-256 of ready buffers ${bareMs.toFixed(3)} ms); their root in a 1,000-leaf tree ${treeMs.toFixed(3)} ms`);
}
