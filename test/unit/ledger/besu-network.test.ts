/**
 * docker/besu/generate.mjs produces a 4-validator QBFT network without Docker: the extraData encoding
 * matches Besu's documented QBFT genesis example byte for byte, the genesis lists the generated
 * validators, each node has a config pointing at the bootnode, and keys are private files.
 */
import { describe, expect, it } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { computeAddress, decodeRlp, SigningKey } from 'ethers';
import { PACKAGE_ROOT } from '../../../src/paths.js';
import { tempDir } from '../../support/app.js';

const SCRIPT = path.join(PACKAGE_ROOT, 'docker/besu/generate.mjs');

describe('Besu QBFT network generator', () => {
  it('encodes extraData exactly like the Besu documentation example', async () => {
    const { qbftExtraData } = await import(SCRIPT) as { qbftExtraData(v: string[]): string };
    const validators = ['0x64a702e6263b7297a96638cac6ae65e6541f4169', '0x3923390ad55e90c237593b3b0e401f3b08a03185',
      '0xaefdb9a738c9f433e5b6b212a6d62f6370c2f692', '0xc7eeb9a4e00ce683cf93039b212648e01c6c6b78'];
    expect(qbftExtraData(validators)).toBe('0xf87aa00000000000000000000000000000000000000000000000000000000000000000f854' +
      '9464a702e6263b7297a96638cac6ae65e6541f4169943923390ad55e90c237593b3b0e401f3b08a03185' +
      '94aefdb9a738c9f433e5b6b212a6d62f6370c2f69294c7eeb9a4e00ce683cf93039b212648e01c6c6b78c080c0');
  });

  it('writes genesis, keys and node configs for 4 validators', () => {
    const out = tempDir('gg-besu-');
    try {
      const r = spawnSync(process.execPath, [SCRIPT, '--out', out, '--chain-id', '4242'], { encoding: 'utf8' });
      expect(r.status).toBe(0);
      const network = JSON.parse(readFileSync(path.join(out, 'network.json'), 'utf8'));
      expect(network.validators).toHaveLength(4);
      const genesis = JSON.parse(readFileSync(path.join(out, 'genesis.json'), 'utf8'));
      expect(genesis.config).toMatchObject({ chainId: 4242, londonBlock: 0, zeroBaseFee: true, qbft: { epochlength: 30000 } });
      expect(genesis.config.shanghaiTime).toBeUndefined();
      const [, listed] = decodeRlp(genesis.extraData) as [string, string[]];
      expect(listed).toEqual(network.validators.map((v: { address: string }) => v.address.toLowerCase()));
      for (const [i, v] of network.validators.entries()) {
        const dir = path.join(out, `validator-${i + 1}`);
        const key = readFileSync(path.join(dir, 'key'), 'utf8').trim();
        expect(computeAddress(`0x${key}`)).toBe(v.address);
        expect(statSync(path.join(dir, 'key')).mode & 0o777).toBe(0o600);
        expect(SigningKey.computePublicKey(`0x${key}`, false).slice(4)).toBe(readFileSync(path.join(dir, 'key.pub'), 'utf8').trim().slice(2));
        const toml = readFileSync(path.join(dir, 'config.toml'), 'utf8');
        expect(toml).toContain('genesis-file="/opt/besu/config/genesis.json"');
        if (i > 0) expect(toml).toContain(`bootnodes=["${network.validators[0].enode}"]`);
      }
      const authority = readFileSync(path.join(out, 'authority.key'), 'utf8').trim();
      expect(computeAddress(authority)).toBe(network.authority);
      expect(genesis.alloc[network.authority.toLowerCase().slice(2)]).toBeDefined();
      // one authority per proxy replica (each keeps its own commitment store), all funded
      expect(network.authorities).toHaveLength(2);
      expect(network.authorities[0]).toBe(network.authority);
      expect(computeAddress(readFileSync(path.join(out, 'authority-2.key'), 'utf8').trim())).toBe(network.authorities[1]);
      for (const a of network.authorities) expect(genesis.alloc[a.toLowerCase().slice(2)]).toBeDefined();
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
