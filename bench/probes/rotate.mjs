// How long `glucoguard keys rotate-master` takes for a store with N patients' data keys (N=10000 by default): the data keys are
// made directly in a fresh store (one per patient, as the first write of each patient makes it), then the whole rotation
// (journal, files, one transaction re-wrapping every key, renames) is timed, three rotations in a row, ms each.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { D } from './kept-store.mjs';
const { openStore } = await import(`${D}/src/repository/embedded/store.js`);
const { KeyRing } = await import(`${D}/src/repository/embedded/keys.js`);
const { loadServerKeys } = await import(`${D}/src/keys.js`);
const { rotateMasterKey } = await import(`${D}/src/key-rotation.js`);
const n = Number(process.env.N ?? 10_000);
const dir = mkdtempSync(path.join(tmpdir(), 'gg-rotate-'));
try {
  const { master, root } = loadServerKeys({ dataDir: dir });
  const { db } = openStore(dir);
  db.transaction(() => {
    const ring = new KeyRing(db, Buffer.from(master, 'base64'), Buffer.from(root, 'base64'));
    for (let i = 0; i < n; i++) ring.keyFor(`patient-${i}`);
  })();
  db.close();
  for (let round = 0; round < 3; round++) {
    const t = performance.now();
    const { dataKeys } = rotateMasterKey({ config: { dataDir: dir } });
    console.log(`rotation ${round + 1}: ${dataKeys.rewrapped.toLocaleString('en')} data keys re-wrapped in ${(performance.now() - t).toFixed(0)} ms`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
