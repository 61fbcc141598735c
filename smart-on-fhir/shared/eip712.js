// Who signed an EIP-712 message (https://eips.ethereum.org/EIPS/eip-712), worked out in the browser:
// the portal checks each guardian's signature before it goes to the server, so a wrong or repeated
// signer is named at once, in words. The hashing and the key recovery are ethers' browser build,
// served from node_modules as /apps/vendor/ethers.min.js (src/web/index.ts); this module adds only
// the checks the chain makes and the words for what is wrong. It advises the page; the chain
// checks every signature again.
import { dataLength, getBytes, isHexString, recoverAddress, Signature, TypedDataEncoder } from '../vendor/ethers.min.js';

const NOT_VALID = 'This is not a valid signature.';

/**
 * The address (EIP-55 checksummed) that signed typed data `{ domain, types, primaryType, message }`
 * with `eth_signTypedData_v4` (or ethers' signTypedData). Throws an error whose message says what is
 * wrong, in words, for a signature that is not 65 bytes of hexadecimal, or that the chain refuses:
 * not a point of the curve, a `v` other than 27/28 (or 0/1), or the high-s form (EIP-2, refused by
 * OpenZeppelin's ECDSA).
 */
export function recoverTypedDataSigner(typedData, signature) {
  const hex = signature.trim();
  if (!isHexString(hex)) throw new Error('A signature is written in hexadecimal, starting with 0x.');
  const length = dataLength(hex);
  if (length !== 65) throw new Error(`A signature is 65 bytes (132 characters with 0x); this one is ${length} bytes.`);
  if (![0, 1, 27, 28].includes(getBytes(hex)[64])) throw new Error(NOT_VALID);
  const sig = Signature.from(hex);
  if (!sig.isValid()) throw new Error(NOT_VALID);
  // eth_signTypedData_v4 requests list EIP712Domain among the types; ethers derives it from the domain.
  const { EIP712Domain: _domainType, ...types } = typedData.types;
  const digest = TypedDataEncoder.hash(typedData.domain, types, typedData.message);
  try {
    return recoverAddress(digest, sig);
  } catch {
    throw new Error(NOT_VALID); // r is not the x of a point on the curve, or r or s is out of range
  }
}
