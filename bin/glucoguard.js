#!/usr/bin/env node
// Thin launcher: the CLI is TypeScript compiled and bundled into dist/bundle by `npm run build`
// (scripts/build.mjs says why it is one file).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
const cli = fileURLToPath(new URL('../dist/bundle/glucoguard.js', import.meta.url));
if (!existsSync(cli)) {
  console.error('glucoguard: not built yet; run `npm run build` (npm start does it for you).');
  process.exit(1);
}
await import(cli);
