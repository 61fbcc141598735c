/**
 * CliqueConsensus that skips re-verifying the seal of blocks this node has just sealed itself (each
 * check is a pure-JS secp256k1 recovery, several per block, and they dominated the sealing time).
 * Every other block (one built elsewhere and handed to the blockchain) gets the full EIP-225 checks:
 * signer in the signer list, not signed too recently, right difficulty, epoch checkpoint signers.
 * The sealer enforces the same rules before it seals (see ChainNode.canSeal).
 */
import type { Block, BlockHeader } from '@ethereumjs/block';
import { CliqueConsensus } from '@ethereumjs/blockchain';
import { bytesToHex, type Address } from '@ethereumjs/util';

type SignerSnapshot = (header?: BlockHeader) => Promise<void>;

export class SealerCliqueConsensus extends CliqueConsensus {
  private readonly own = new Set<string>();

  constructor(private readonly sealer?: Address) {
    super();
    // The base class recovers each new block's signer to keep its "recent signers" list; for blocks
    // sealed here the signer is known. (Private in the typings, hence the cast; pinned to v10.)
    const self = this as unknown as { cliqueUpdateLatestBlockSigners: SignerSnapshot; cliqueSignerLimit: (n: bigint) => number };
    const original = self.cliqueUpdateLatestBlockSigners.bind(this);
    self.cliqueUpdateLatestBlockSigners = async (header) => {
      if (!header || !this.sealer || !this.own.has(bytesToHex(header.hash()))) return original(header);
      this._cliqueLatestBlockSigners.push([header.number, this.sealer]);
      const limit = self.cliqueSignerLimit(header.number);
      if (this._cliqueLatestBlockSigners.length > limit) this._cliqueLatestBlockSigners = this._cliqueLatestBlockSigners.slice(-limit);
      await original(undefined); // persists the list
    };
  }

  /** Marks a block sealed by this node's key; forgotten once the block is stored. */
  trust(block: Block): void {
    this.own.add(bytesToHex(block.hash()));
  }

  forget(block: Block): void {
    this.own.delete(bytesToHex(block.hash()));
  }

  /** Whether `block` is one this node has just sealed (between `trust` and `forget`). */
  isOwn(block: Block): boolean {
    return this.own.has(bytesToHex(block.hash()));
  }

  override async validateConsensus(block: Block): Promise<void> {
    if (this.own.has(bytesToHex(block.hash()))) return;
    return super.validateConsensus(block);
  }

  override async validateDifficulty(header: BlockHeader): Promise<void> {
    if (this.own.has(bytesToHex(header.hash()))) return;
    return super.validateDifficulty(header);
  }

  /** Whether `signer` may seal block `number` without breaking the "signed recently" rule. */
  maySeal(signer: Address, number: bigint): boolean {
    const signers = this.cliqueActiveSigners(number);
    if (!signers.some((s) => s.equals(signer))) return false;
    const limit = BigInt(Math.floor(signers.length / 2) + 1);
    return !this._cliqueLatestBlockSigners.some(([n, s]) => s.equals(signer) && number - n < limit);
  }
}
