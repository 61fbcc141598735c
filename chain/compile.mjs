#!/usr/bin/env node
// Compiles chain/contracts/*.sol with the `solc` npm package (no download: solc-js ships the compiler) and
// writes chain/artifacts/<Name>.json ({ contractName, abi, bytecode, deployedBytecode }) for every
// non-interface contract, then the typed ethers bindings src/ledger/contracts.generated.ts (bindings.mjs). Skips the work when sources, imports and settings are unchanged (hash file).
//
// Target EVM is "london": EthereumJS runs Clique only up to London, and the same bytecode runs on Besu.
// OpenZeppelin 5.x's utils/Bytes.sol uses `mcopy` (Cancun) in helpers our contracts never call, but solc
// type-checks every imported file, so that one file is rewritten at import time to copy memory through the
// byte-wise memmove in plain Yul (copying backwards when the regions overlap that way), which keeps the
// functions `pure` and behaves like mcopy. Only these dead helpers change; the contracts' own code does not.
//
// Usage: node chain/compile.mjs [--force]
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { OUT as BINDINGS, generateBindings } from './bindings.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const require = createRequire(import.meta.url);
const contractsDir = path.join(here, 'contracts');
const artifactsDir = path.join(here, 'artifacts');
const hashFile = path.join(artifactsDir, '.sources.sha256');

const solc = require('solc');
const settings = {
  evmVersion: 'london',
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
};

/** Resolves `@openzeppelin/...` (and any other package) imports from node_modules. */
function readImport(importPath) {
  const local = path.join(contractsDir, importPath);
  if (existsSync(local)) return readFileSync(local, 'utf8');
  const resolved = require.resolve(importPath, { paths: [root] });
  const text = readFileSync(resolved, 'utf8');
  return /\bmcopy\s*\(/.test(text) ? rewriteMcopy(text) : text;
}

/** Replaces each `mcopy(dst, src, len)` statement by an equivalent Yul memmove block. */
export function rewriteMcopy(text) {
  let out = '';
  let i = 0;
  const re = /\bmcopy\s*\(/g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const start = m.index + m[0].length;
    const args = [];
    let depth = 0;
    let argStart = start;
    let j = start;
    for (; j < text.length; j++) {
      const c = text[j];
      if (c === '(') depth++;
      else if (c === ')') {
        if (depth === 0) break;
        depth--;
      } else if (c === ',' && depth === 0) {
        args.push(text.slice(argStart, j).trim());
        argStart = j + 1;
      }
    }
    args.push(text.slice(argStart, j).trim());
    if (args.length !== 3) throw new Error(`cannot rewrite mcopy call with ${args.length} arguments`);
    const [dst, src, len] = args;
    out += text.slice(i, m.index) + memmove(dst, src, len);
    i = j + 1;
    re.lastIndex = i;
  }
  return out + text.slice(i);
}

function memmove(dst, src, len) {
  const copy = (i) => `mstore8(add(mcopy_d, ${i}), byte(0, mload(add(mcopy_s, ${i}))))`;
  return `{ let mcopy_d := ${dst} let mcopy_s := ${src} let mcopy_n := ${len} `
    + 'switch gt(mcopy_d, mcopy_s) '
    + `case 1 { for { let mcopy_i := mcopy_n } gt(mcopy_i, 0) { mcopy_i := sub(mcopy_i, 1) } { ${copy('sub(mcopy_i, 1)')} } } `
    + `default { for { let mcopy_i := 0 } lt(mcopy_i, mcopy_n) { mcopy_i := add(mcopy_i, 1) } { ${copy('mcopy_i')} } } }`;
}

function main() {
  const force = process.argv.includes('--force');
  const files = readdirSync(contractsDir).filter((f) => f.endsWith('.sol')).sort();
  const sources = Object.fromEntries(files.map((f) => [f, { content: readFileSync(path.join(contractsDir, f), 'utf8') }]));

  const hash = createHash('sha256');
  hash.update(JSON.stringify({ solc: solc.version(), settings, oz: require('@openzeppelin/contracts/package.json').version }));
  for (const f of files) hash.update(f).update('\0').update(sources[f].content).update('\0');
  const digest = hash.digest('hex');
  const expected = files.filter((f) => !/^I[A-Z]/.test(f)).map((f) => path.join(artifactsDir, f.replace(/\.sol$/, '.json')));
  if (!force && existsSync(hashFile) && readFileSync(hashFile, 'utf8').trim() === digest && expected.every((f) => existsSync(f))) {
    if (!existsSync(BINDINGS)) generateBindings(artifactsDir);
    return;
  }

  const input = { language: 'Solidity', sources, settings };
  const output = JSON.parse(solc.compile(JSON.stringify(input), {
    import: (p) => {
      try {
        return { contents: readImport(p) };
      } catch (err) {
        return { error: `cannot resolve ${p}: ${err.message}` };
      }
    },
  }));
  const errors = (output.errors ?? []).filter((e) => e.severity === 'error');
  for (const w of (output.errors ?? []).filter((e) => e.severity !== 'error')) {
    if (w.sourceLocation?.file && sources[w.sourceLocation.file]) process.stderr.write(w.formattedMessage);
  }
  if (errors.length) {
    for (const e of errors) process.stderr.write(e.formattedMessage);
    process.exit(1);
  }

  mkdirSync(artifactsDir, { recursive: true });
  for (const f of files) {
    for (const [name, c] of Object.entries(output.contracts[f] ?? {})) {
      if (!c.evm.bytecode.object) continue; // interfaces and abstract contracts
      const artifact = {
        contractName: name,
        sourceName: `chain/contracts/${f}`,
        compiler: { solc: solc.version(), evmVersion: settings.evmVersion, optimizerRuns: settings.optimizer.runs },
        abi: c.abi,
        bytecode: `0x${c.evm.bytecode.object}`,
        deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
      };
      writeFileSync(path.join(artifactsDir, `${name}.json`), `${JSON.stringify(artifact, null, 2)}\n`);
    }
  }
  writeFileSync(hashFile, `${digest}\n`);
  generateBindings(artifactsDir);
  process.stdout.write(`chain: compiled ${files.length} Solidity sources into chain/artifacts (evm london)\n`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
