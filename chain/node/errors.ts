/** JSON-RPC errors with the codes geth and Besu use, so ethers maps them to its own error codes. */
export class RpcError extends Error {
  constructor(readonly code: number, message: string, readonly data?: string) {
    super(message);
  }
}

export const invalidParams = (message: string): RpcError => new RpcError(-32602, message);
/** Transaction rejected by the pool (nonce too low, insufficient funds, …): geth's -32000. */
export const txRejected = (message: string): RpcError => new RpcError(-32000, message);
/** `execution reverted`, code 3 with the revert bytes as data (EIP-1474 / geth). */
export const reverted = (data: string, reason?: string): RpcError =>
  new RpcError(3, reason ? `execution reverted: ${reason}` : 'execution reverted', data);
