// The worker of integrity-worker.mjs: the tree path of IntegrityChecker.checkByTrees (commitment look-up, leaves hashed, roots of the batches' trees) for versions posted to it chunk by chunk; `nop` only receives them.
import { parentPort, workerData } from 'node:worker_threads';
const D = workerData.D;
const { CommitmentStore } = await import(`${D}/src/ledger/store.js`);
const { commitmentOf } = await import(`${D}/src/ledger/canonical.js`);
const { rootOfLeaves } = await import(`${D}/src/ledger/merkle.js`);
const store = new CommitmentStore(workerData.file);
let groups = new Map(); let rest = [];
parentPort.on('message', (m) => {
  if (m.end) {
    const out = [];
    for (const [batch, g] of groups) {
      g.known.sort((a, b) => a.index - b.index);
      const root = rootOfLeaves(g.size, g.nodes, g.known);
      out.push({ batch, root, n: g.known.length });
    }
    groups = new Map(); const r = rest; rest = [];
    parentPort.postMessage({ out, rest: r.length });
    return;
  }
  const { keys, texts, base } = m; if (workerData.nop) return;
  const t = store.treeGroups(keys);
  for (const g of t.groups) {
    let G = groups.get(g.batch); if (!G) groups.set(g.batch, G = { size: g.size, nodes: g.nodes, salts: g.salts, known: [] });
    for (const { at, index } of g.members) {
      const salt = g.salts.subarray(32 * index, 32 * index + 32);
      G.known.push({ index, leaf: commitmentOf(salt, texts[at]), at: base + at });
    }
  }
  rest.push(...t.rest);
});
