/**
 * MerkleStateManager with one fix: a storage write goes into the storage cache only, and reaches the
 * storage trie when the cache is flushed (end of a block, or a call's checkpoint being dropped).
 *
 * EthereumJS v10's `putStorage` reads `caches.storage.put(…) ?? await writeContractStorage(…)`; `put`
 * returns undefined, so every SSTORE also rewrote the storage trie at once. Storage tries hold no
 * checkpoints, so for eth_call / eth_estimateGas that meant LevelDB batches of throw-away trie nodes on
 * every call that stores (about six per `anchor()` estimate), and during block building each slot was
 * hashed into the trie twice. With the cache as the only write path, a block's slots are written once,
 * by the flush that computes the state root, inside the block's buffered write.
 */
import { RLP } from '@ethereumjs/rlp';
import { MerkleStateManager, type MerkleStateManagerOpts } from '@ethereumjs/statemanager';
import { type Address, unpadBytes } from '@ethereumjs/util';

export class CachedStorageStateManager extends MerkleStateManager {
  constructor(opts: MerkleStateManagerOpts) {
    super(opts);
  }

  override async putStorage(address: Address, key: Uint8Array, value: Uint8Array): Promise<void> {
    const storage = this._caches?.storage;
    if (storage === undefined) return super.putStorage(address, key, value);
    if (key.length !== 32) throw new Error('Storage key must be 32 bytes long');
    if (value.length > 32) throw new Error('Storage value cannot be longer than 32 bytes');
    if (!(await this.getAccount(address))) throw new Error('putStorage() called on non-existing account');
    storage.put(address, key, RLP.encode(unpadBytes(value)));
  }

  /** Copies keep the fix (the base class would hand back a plain MerkleStateManager). */
  override shallowCopy(downlevelCaches = true): CachedStorageStateManager {
    const base = super.shallowCopy(downlevelCaches) as unknown as {
      _trie: MerkleStateManagerOpts['trie'];
      _caches: MerkleStateManagerOpts['caches'];
      common: MerkleStateManagerOpts['common'];
      _prefixCodeHashes: boolean;
      _prefixStorageTrieKeys: boolean;
    };
    return new CachedStorageStateManager({
      common: base.common,
      trie: base._trie,
      caches: base._caches,
      prefixCodeHashes: base._prefixCodeHashes,
      prefixStorageTrieKeys: base._prefixStorageTrieKeys,
    });
  }
}
