// Signing with the patient's own wallet (non-custodial): an injected EIP-1193 provider
// (window.ethereum, e.g. a browser extension) signs EIP-712 typed data with eth_signTypedData_v4.
// GlucoGuard never sees the wallet's key: it hands out the typed data and relays the signature.

/** True when the browser has an EIP-1193 wallet. */
export function hasWallet() {
  return typeof window.ethereum?.request === 'function';
}

const DOMAIN_FIELDS = [['name', 'string'], ['version', 'string'], ['chainId', 'uint256'], ['verifyingContract', 'address'], ['salt', 'bytes32']];

/** The JSON eth_signTypedData_v4 expects: the domain's own type listed under types.EIP712Domain. */
export function v4Payload(typedData) {
  const domainType = DOMAIN_FIELDS.filter(([name]) => typedData.domain[name] !== undefined).map(([name, type]) => ({ name, type }));
  return JSON.stringify({
    domain: typedData.domain,
    types: { EIP712Domain: domainType, ...typedData.types },
    primaryType: typedData.primaryType,
    message: typedData.message,
  });
}

/**
 * Asks the wallet to sign. `expected` is the address GlucoGuard has for the patient: a different
 * account is refused here, in words, rather than by the chain later.
 */
export async function signWithWallet(typedData, expected) {
  if (!hasWallet()) throw new Error('No wallet was found in this browser.');
  const accounts = await window.ethereum.request({ method: 'eth_requestAccounts' });
  const account = expected
    ? accounts.find((a) => a.toLowerCase() === expected.toLowerCase())
    : accounts[0];
  if (!account) throw new Error(`Your wallet did not offer the account registered for you (${expected}).`);
  return window.ethereum.request({ method: 'eth_signTypedData_v4', params: [account, v4Payload(typedData)] });
}
