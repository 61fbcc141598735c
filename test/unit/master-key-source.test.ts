/**
 * Where the master key comes from, as configuration takes it and start-up names it: one source
 * only, the file GLUCOGUARD_MASTER_KEY_FILE names said as such, a key file left in the data
 * directory warned about, and a key file that cannot be read told apart from a missing one.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { ConfigError, insecureSettings, loadConfig, prepareDataDir } from '../../src/config.js';
import { describeServerKeys, masterKeyPath, masterKeySource, readKeyFile } from '../../src/keys.js';

const dir = mkdtempSync(path.join(tmpdir(), 'gg-keysource-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const key = () => randomBytes(32).toString('base64');

describe('the master key source', () => {
  test('GLUCOGUARD_MASTER_KEY and GLUCOGUARD_MASTER_KEY_FILE together are refused', () => {
    const file = path.join(dir, 'both.key');
    const k = key();
    writeFileSync(file, `${k}\n`);
    expect(() => loadConfig({ GLUCOGUARD_MASTER_KEY: k, GLUCOGUARD_MASTER_KEY_FILE: file }))
      .toThrow(/GLUCOGUARD_MASTER_KEY and GLUCOGUARD_MASTER_KEY_FILE are both set: give the master key one way only/);
  });

  test('a key from GLUCOGUARD_MASTER_KEY_FILE is named by the setting and its file; from GLUCOGUARD_MASTER_KEY by that setting; else the data directory\'s file', () => {
    const file = path.join(dir, 'given.key');
    writeFileSync(file, `${key()}\n`);
    const data = path.join(dir, 'data');
    const fromFile = loadConfig({ GLUCOGUARD_MASTER_KEY_FILE: file, GLUCOGUARD_DATA_DIR: data });
    expect(fromFile.masterKeyFile).toBe(file);
    expect(masterKeySource(fromFile)).toEqual({ adapter: 'file (GLUCOGUARD_MASTER_KEY_FILE)', location: file });
    const fromEnv = loadConfig({ GLUCOGUARD_MASTER_KEY: key(), GLUCOGUARD_DATA_DIR: data });
    expect(fromEnv.masterKeyFile).toBeUndefined();
    expect(masterKeySource(fromEnv)).toEqual({ adapter: 'env', location: 'GLUCOGUARD_MASTER_KEY' });
    expect(masterKeySource(loadConfig({ GLUCOGUARD_DATA_DIR: data }))).toEqual({ adapter: 'file', location: masterKeyPath(data) });
    const status = describeServerKeys(fromFile);
    expect(status.lines[0]).toMatch(new RegExp(`^master key: GLUCOGUARD_MASTER_KEY_FILE=${file} \\(fingerprint [0-9a-f]{16}\\)$`));
  });

  test('a GLUCOGUARD_MASTER_KEY_FILE holding no key names the file, not GLUCOGUARD_MASTER_KEY', () => {
    const file = path.join(dir, 'short.key');
    writeFileSync(file, 'c2hvcnQ=\n');
    expect(() => loadConfig({ GLUCOGUARD_MASTER_KEY_FILE: file })).toThrow(`GLUCOGUARD_MASTER_KEY_FILE: ${file} does not hold a 32-byte key, base64-encoded`);
  });

  test('a key file left in the data directory beside a configured key is warned about, naming it and the documented step', () => {
    const data = path.join(dir, 'leftover');
    const config = loadConfig({ GLUCOGUARD_MASTER_KEY: key(), GLUCOGUARD_DATA_DIR: data });
    expect(insecureSettings(config).join('\n')).not.toMatch(/still in the data directory/);
    mkdirSync(path.dirname(masterKeyPath(data)), { recursive: true });
    writeFileSync(masterKeyPath(data), `${key()}\n`);
    expect(insecureSettings(config)).toContainEqual(`${masterKeyPath(data)} is still in the data directory although the master key comes from GLUCOGUARD_MASTER_KEY: `
      + 'it is not used, but every copy of the directory carries it; delete it once this key is safe elsewhere (docs/operations.md, Moving the master key out of the data directory)');
    // the data directory's own key file is the key in use: no such warning
    expect(insecureSettings(loadConfig({ GLUCOGUARD_DATA_DIR: data })).join('\n')).not.toMatch(/still in the data directory/);
  });

  test('a key file that is missing, a directory, or not a key: each says so, never the content', () => {
    const missing = path.join(dir, 'missing.key');
    expect(() => loadConfig({ GLUCOGUARD_MASTER_KEY_FILE: missing })).toThrow(`GLUCOGUARD_MASTER_KEY_FILE: cannot read ${missing}: no such file`);
    expect(() => readKeyFile(missing)).toThrow(`cannot read ${missing}: no such file`);
    expect(() => readKeyFile(dir)).toThrow(`cannot read ${dir}: it is a directory, not a file`);
    const text = path.join(dir, 'text.key');
    writeFileSync(text, 'secret words\n');
    let message = '';
    try {
      readKeyFile(text);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toBe(`${text} does not hold a base64 32-byte key`);
  });
});

describe('the data directory check', () => {
  test('a data directory that is a file is refused by name; a missing one is made owner-only when the command sets one up', () => {
    const file = path.join(dir, 'a-file');
    writeFileSync(file, 'x');
    expect(() => prepareDataDir(file, { create: true, write: true })).toThrow(ConfigError);
    expect(() => prepareDataDir(file, { create: true, write: true })).toThrow(`GLUCOGUARD_DATA_DIR: ${file} is not a directory`);
    const fresh = path.join(dir, 'new', 'data');
    prepareDataDir(fresh, { create: false, write: true });
    expect(existsSync(path.join(dir, 'new'))).toBe(false); // not created without `create`
    prepareDataDir(fresh, { create: true, write: true });
    expect(statSync(fresh).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(dir, 'new')).mode & 0o777).toBe(0o700);
  });
});
