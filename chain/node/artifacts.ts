/**
 * Compiled contracts (chain/artifacts/<Name>.json, written by chain/compile.mjs). The artifacts are
 * committed, so a fresh clone has them; when they are missing the compile step is run once here.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export type ContractName = 'ResourceAnchor' | 'ConsentRegistry' | 'IdentityRegistry';
export const CONTRACT_NAMES: readonly ContractName[] = ['ResourceAnchor', 'ConsentRegistry', 'IdentityRegistry'];

export interface Artifact {
  contractName: string;
  abi: unknown[];
  bytecode: string;
  deployedBytecode: string;
}

/**
 * Package root: the nearest ancestor of this module that holds chain/compile.mjs (a checkout) or
 * chain/artifacts (an installation without the contract sources, such as the Docker image's
 * runtime stage, which copies only the artifacts).
 */
function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'chain', 'compile.mjs')) || existsSync(path.join(dir, 'chain', 'artifacts'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find chain/artifacts or chain/compile.mjs above the chain node module');
    dir = up;
  }
}

/** Directory of the compiled artifacts. */
export function artifactsDir(): string {
  return path.join(repoRoot(), 'chain', 'artifacts');
}

const cache = new Map<ContractName, Artifact>();

/** Loads a contract's ABI and bytecode, compiling the contracts first when the artifact is missing. */
export function loadArtifact(name: ContractName): Artifact {
  const hit = cache.get(name);
  if (hit) return hit;
  const file = path.join(artifactsDir(), `${name}.json`);
  if (!existsSync(file)) {
    const root = repoRoot();
    if (!existsSync(path.join(root, 'chain', 'compile.mjs'))) throw new Error(`${file} is missing and this installation has no contract sources to compile it from`);
    const r = spawnSync(process.execPath, [path.join(root, 'chain', 'compile.mjs')], { cwd: root, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`compiling contracts failed: ${r.stderr}`);
  }
  const artifact = JSON.parse(readFileSync(file, 'utf8')) as Artifact;
  cache.set(name, artifact);
  return artifact;
}
