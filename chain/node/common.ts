/**
 * The chain's Common, tuned for a chain that is London from genesis on. EthereumJS copies its Common
 * for every transaction and header it decodes, and every header re-merges the block params into it;
 * together with pure-JS signature recovery these were most of the time spent sealing and reading blocks.
 * - `copy()` returns the same instance: copies exist so an object can switch hardfork, which never
 *   happens here.
 * - `updateParams()` merges each (module-constant) params object once; merging it again changes nothing.
 * - `customCrypto.ecrecover` remembers recent recoveries: a transaction's sender is recovered when it
 *   arrives and again when the block holding it (rebuilt from the same bytes) is validated.
 */
import { type Common, createCommonFromGethGenesis } from '@ethereumjs/common';
import { bytesToHex, ecrecover } from '@ethereumjs/util';
import type { GethGenesis } from './genesis.js';

const RECOVERY_CACHE = 4096;

export function chainCommon(genesis: GethGenesis): Common {
  const recovered = new Map<string, Uint8Array>();
  const common = createCommonFromGethGenesis(genesis as never, {
    chain: 'glucoguard',
    hardfork: 'london',
    customCrypto: {
      ecrecover: (msgHash, v, r, s, chainId) => {
        const key = `${bytesToHex(msgHash)}${v}${bytesToHex(r)}${bytesToHex(s)}${chainId ?? ''}`;
        let pub = recovered.get(key);
        if (!pub) {
          pub = ecrecover(msgHash, v, r, s, chainId);
          recovered.set(key, pub);
          if (recovered.size > RECOVERY_CACHE) recovered.delete(recovered.keys().next().value!);
        }
        return pub;
      },
    },
  });
  common.copy = () => common;
  const merged = new WeakSet<object>();
  const updateParams = common.updateParams.bind(common);
  common.updateParams = (params) => {
    if (merged.has(params)) return;
    merged.add(params);
    updateParams(params);
  };
  return common;
}
