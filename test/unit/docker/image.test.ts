/**
 * The proxy image's runtime stage (docker/Dockerfile) holds everything the server needs, checked
 * without Docker: every package the compiled server imports survives `npm prune --omit=dev`, and a
 * server started from only the files that stage copies (its node_modules stood in for by this
 * checkout's) serves FHIR, SMART discovery and the apps under NODE_ENV=production, as a user who
 * can write only its data directory (when the tests run as root), passes the image's HEALTHCHECK
 * command and stops cleanly. A file read from anywhere else (src/, docs/, scripts/,
 * chain/contracts/) fails it.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../../src/paths.js';
import { tempDir } from '../../support/app.js';
import { buildOnce, startServer } from '../../support/process.js';

const dockerfile = readFileSync(path.join(PACKAGE_ROOT, 'docker/Dockerfile'), 'utf8');
/** The runtime stage: what follows the last FROM. */
const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
/** Its `COPY --from=build /app/<src> ./<dest>` lines. */
const copies = [...runtime.matchAll(/^COPY --from=build(?: --chown=\S+)? \/app\/(\S+) \.\/(\S+)$/gm)].map((m) => ({ from: m[1]!, to: m[2]! }));

/** Every JavaScript file under `dir`. */
function scripts(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.js') || f.endsWith('.mjs')).map((f) => path.join(dir, f));
}

/** The package a bare import specifier names (`@scope/name/sub` → `@scope/name`); undefined for relative ones and Node's own. */
function packageOf(specifier: string): string | undefined {
  if (specifier.startsWith('.') || specifier.startsWith('/') || isBuiltin(specifier)) return undefined;
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

describe('docker/Dockerfile runtime stage', () => {
  beforeAll(() => buildOnce(), 180_000);

  test('copies the compiled server, its command, profiles, contract artifacts, apps and package.json', () => {
    expect(copies.map((c) => c.from).sort()).toEqual(expect.arrayContaining(['bin', 'dist', 'node_modules', 'package.json', 'profiles', 'chain/artifacts', 'smart-on-fhir']));
    expect(dockerfile).toMatch(/npm run build && npm prune --omit=dev/);
  });

  test('every package the compiled server imports is a production dependency (kept by npm prune --omit=dev)', () => {
    const manifest = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    const shipped = [path.join(PACKAGE_ROOT, 'bin'), path.join(PACKAGE_ROOT, 'dist', 'src'), path.join(PACKAGE_ROOT, 'dist', 'chain')];
    const imported = new Map<string, string>();
    for (const file of shipped.flatMap(scripts)) {
      const text = readFileSync(file, 'utf8');
      // import/export … from '…', import('…'), require('…'), import '…'; a specifier is a module name
      // (no spaces or commas), which keeps SQL and message text such as `'time-bound-from', '1'` out
      for (const m of text.matchAll(/(?:(?:^|[\s}*])from\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|^import\s+)(['"])([^'"\n\s,]+)\1/gm)) {
        const name = packageOf(m[2]!);
        if (name && !imported.has(name)) imported.set(name, path.relative(PACKAGE_ROOT, file));
      }
    }
    expect(imported.size).toBeGreaterThan(10); // the scan found the server's imports
    const undeclared = [...imported].filter(([name]) => !(name in manifest.dependencies)).map(([name, file]) => `${name} (${file})`);
    expect(undeclared).toEqual([]);
  });

  describe('a server from those files alone', () => {
    let root: string;
    beforeAll(() => {
      root = tempDir('gg-image-');
      for (const { from, to } of copies) {
        if (from === 'node_modules') continue; // stood in for: the dependency test above checks what prune keeps
        mkdirSync(path.dirname(path.join(root, to)), { recursive: true });
        cpSync(path.join(PACKAGE_ROOT, from), path.join(root, to), { recursive: true });
      }
      symlinkSync(path.join(PACKAGE_ROOT, 'node_modules'), path.join(root, 'node_modules'), 'dir');
      expect(statSync(path.join(root, 'bin', 'glucoguard.js')).isFile()).toBe(true);
    });
    afterAll(() => rmSync(root, { recursive: true, force: true }));

    test('serves FHIR, SMART discovery and the apps in production, passes the HEALTHCHECK and stops cleanly', async () => {
      const dataDir = path.join(root, 'data');
      mkdirSync(dataDir);
      // The image runs as `node`, its files owned by root: as root here, the server runs as nobody,
      // so it can write nothing but its data directory (as under compose's read_only root filesystem).
      const user = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : undefined;
      if (user) {
        chmodSync(root, 0o755);
        chownSync(dataDir, user.uid, user.gid);
      } else {
        console.warn('not run as root: the server runs as this user, not as an unprivileged one');
      }
      const env: Record<string, string> = { NODE_ENV: 'production', GLUCOGUARD_DATA_DIR: dataDir };
      const server = await startServer(env, 90_000, path.join(root, 'bin', 'glucoguard.js'), user);
      try {
        const get = (p: string) => fetch(`${server.origin}${p}`);
        expect((await get('/healthz')).status).toBe(200);
        const metadata = await get('/fhir/metadata');
        expect(metadata.status).toBe(200);
        expect(((await metadata.json()) as { resourceType: string }).resourceType).toBe('CapabilityStatement');
        expect((await get('/fhir/.well-known/smart-configuration')).status).toBe(200);
        for (const page of ['/apps/portal/launch.html', '/apps/clinician/launch.html']) expect((await get(page)).status).toBe(200);
        // auth is on: production refuses to run without it
        expect((await get('/fhir/Observation')).status).toBe(401);
        const check = /^HEALTHCHECK .* CMD (.+)$/m.exec(runtime)?.[1];
        const argv = JSON.parse(JSON.stringify(check?.match(/^node -e "(.+)"$/)?.[1] ?? null)) as string | null;
        expect(argv).toMatch(/healthz/);
        const probe = spawnSync(process.execPath, ['-e', argv!.replace('127.0.0.1:8080', `127.0.0.1:${server.port}`)], { encoding: 'utf8', timeout: 20_000 });
        expect(probe.status).toBe(0);
      } finally {
        expect(await server.stop()).toBe(0);
      }
    }, 120_000);
  });
});
