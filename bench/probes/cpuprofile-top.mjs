// Self and inclusive time per function of a V8 .cpuprofile (node --cpu-prof, or the inspector): node bench/probes/cpuprofile-top.mjs <file>; TOP / TOPI rows.
import { readFileSync } from 'node:fs';
const p = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const byId = new Map(p.nodes.map((n) => [n.id, n]));
const self = new Map();
const dt = new Map();
for (let i = 0; i < p.samples.length; i++) dt.set(p.samples[i], (dt.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0));
const parent = new Map();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
let total = 0;
const incl = new Map();
for (const n of p.nodes) {
  const t = dt.get(n.id) ?? 0; total += t;
  const cf = n.callFrame; const key = `${cf.functionName || '(anon)'} ${cf.url.split('/').slice(-2).join('/')}:${cf.lineNumber}`;
  self.set(key, (self.get(key) ?? 0) + t);
  // inclusive: walk ancestors, count each key once
  const seen = new Set(); let cur = n.id;
  while (cur !== undefined) { const m = byId.get(cur); const c2 = m.callFrame; const k2 = `${c2.functionName || '(anon)'} ${c2.url.split('/').slice(-2).join('/')}:${c2.lineNumber}`; if (!seen.has(k2)) { seen.add(k2); incl.set(k2, (incl.get(k2) ?? 0) + t); } cur = parent.get(cur); }
}
const top = (m, n) => [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, v]) => `${(100 * v / total).toFixed(1).padStart(5)}% ${(v / 1000).toFixed(0).padStart(6)}ms ${k}`).join('\n');
console.log('total', (total / 1000).toFixed(0), 'ms\n--- self');
console.log(top(self, Number(process.env.TOP ?? 40)));
console.log('--- inclusive');
console.log(top(incl, Number(process.env.TOPI ?? 60)));
