/**
 * The chain port: what GlucoGuard needs from a proof-of-authority EVM chain, over standard Ethereum
 * JSON-RPC through ethers v6 — a provider, ONE nonce-managed authority signer shared by every
 * sender (anchoring, consent relaying, identity registration) so concurrent sends never collide or
 * leave gaps, and the three contracts. Nothing here knows which engine (embedded Clique node, Besu)
 * is behind the URL; src/app.ts decides that.
 */
import {
  AbstractSigner, Contract, JsonRpcProvider, Wallet, type ContractRunner, type InterfaceAbi, type Provider, type TransactionRequest,
  type TransactionResponse, type TypedDataDomain, type TypedDataField,
} from 'ethers';
import { loadArtifact, type ContractName } from '../../chain/node/artifacts.js';
import { NonceManager } from './nonce.js';

/**
 * The authority as an ethers Signer whose sends go through ONE NonceManager (src/ledger/nonce.ts):
 * gas is estimated before a nonce is taken, nonces are handed out in order under a lock, and a send
 * the node refuses gives its nonce back — so a reverting consent relay never leaves a gap that
 * would stall every later anchor. (ethers' own NonceManager takes the nonce before estimating.)
 */
export class AuthoritySigner extends AbstractSigner {
  private readonly manager: NonceManager;

  constructor(private readonly wallet: Wallet) {
    super(wallet.provider);
    this.manager = new NonceManager(wallet);
  }

  override async getAddress(): Promise<string> {
    return this.wallet.address;
  }

  override connect(_provider: Provider | null): AuthoritySigner {
    throw new Error('the authority signer is bound to its provider');
  }

  override async sendTransaction(tx: TransactionRequest): Promise<TransactionResponse> {
    return this.manager.send(tx);
  }

  override signTransaction(tx: TransactionRequest): Promise<string> {
    return this.wallet.signTransaction(tx);
  }

  override signMessage(message: string | Uint8Array): Promise<string> {
    return this.wallet.signMessage(message);
  }

  override signTypedData(domain: TypedDataDomain, types: Record<string, TypedDataField[]>, value: Record<string, unknown>): Promise<string> {
    return this.wallet.signTypedData(domain, types, value);
  }

  /** Forgets the cached nonce (another process used the key, or after a restart); the next send asks the node. */
  reset(): void {
    this.manager.reset();
  }
}

/**
 * ethers settings for talking to the chain: `staticNetwork` (no eth_chainId probe per call),
 * `cacheTimeout: -1` (never a stale nonce or block), and batching without ethers' default 10 ms stall:
 * requests made in the same tick (fee data: latest block, gas price, priority fee; a gas estimate
 * beside them) travel as one JSON-RPC batch, one HTTP round trip instead of four.
 */
export const CLIENT_PROVIDER_OPTIONS = { staticNetwork: true, cacheTimeout: -1, batchStallTime: 0, batchMaxCount: 20 } as const;

export interface ChainAddresses {
  ResourceAnchor: string;
  ConsentRegistry: string;
  IdentityRegistry: string;
}

export interface ChainClientOptions {
  rpcUrl: string;
  chainId: number;
  /** Private key (0x hex) of the authority account that relays and anchors. */
  authorityKey: string;
  addresses: ChainAddresses;
  /** Shown in the start-up log: 'embedded' or 'rpc'. */
  adapter: 'embedded' | 'rpc';
}

export class ChainClient {
  readonly provider: JsonRpcProvider;
  /** The authority signer, nonce-managed: use it for every transaction the proxy sends. */
  readonly authority: AuthoritySigner;
  readonly authorityAddress: string;
  readonly addresses: ChainAddresses;
  readonly chainId: number;
  readonly description: { adapter: 'embedded' | 'rpc'; location: string };
  private readonly contracts = new Map<ContractName, Contract>();

  constructor(options: ChainClientOptions) {
    this.provider = new JsonRpcProvider(options.rpcUrl, options.chainId, CLIENT_PROVIDER_OPTIONS);
    const wallet = new Wallet(options.authorityKey, this.provider);
    this.authority = new AuthoritySigner(wallet);
    this.authorityAddress = wallet.address;
    this.addresses = options.addresses;
    this.chainId = options.chainId;
    this.description = { adapter: options.adapter, location: redact(options.rpcUrl) };
  }

  /** A contract bound to the authority signer (sends) or to another runner (reads, other signers). */
  contract(name: ContractName, runner: ContractRunner = this.authority): Contract {
    if (runner === this.authority) {
      const hit = this.contracts.get(name);
      if (hit) return hit;
    }
    const c = new Contract(this.addresses[name], loadArtifact(name).abi as InterfaceAbi, runner);
    if (runner === this.authority) this.contracts.set(name, c);
    return c;
  }

  /** Latest block number; throws when the node cannot be reached (callers fail closed). */
  async head(): Promise<number> {
    return this.provider.getBlockNumber();
  }

  async close(): Promise<void> {
    this.provider.destroy();
  }
}

function redact(url: string): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    return u.toString().replace(/\/$/, '');
  } catch {
    return 'invalid URL';
  }
}
