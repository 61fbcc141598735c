// Who signed an EIP-712 message, worked out in the browser: the portal checks each guardian's
// signature before it goes to the server, so a wrong or repeated signer is named at once, in words.
// Plain ES module, no dependencies (the apps are served as they are, without a bundler): Keccak-256,
// the EIP-712 hash (https://eips.ethereum.org/EIPS/eip-712) and secp256k1 public-key recovery.
// It only advises the page; the chain checks every signature again.

const MASK64 = (1n << 64n) - 1n;
const ROUND_CONSTANTS = [
  0x0000000000000001n, 0x0000000000008082n, 0x800000000000808an, 0x8000000080008000n, 0x000000000000808bn, 0x0000000080000001n,
  0x8000000080008081n, 0x8000000000008009n, 0x000000000000008an, 0x0000000000000088n, 0x0000000080008009n, 0x000000008000000an,
  0x000000008000808bn, 0x800000000000008bn, 0x8000000000008089n, 0x8000000000008003n, 0x8000000000008002n, 0x8000000000000080n,
  0x000000000000800an, 0x800000008000000an, 0x8000000080008081n, 0x8000000000008080n, 0x0000000080000001n, 0x8000000080008008n,
];
const ROTATIONS = [1, 3, 6, 10, 15, 21, 28, 36, 45, 55, 2, 14, 27, 41, 56, 8, 25, 43, 62, 18, 39, 61, 20, 44];
const PI_LANES = [10, 7, 11, 17, 18, 3, 5, 16, 8, 21, 24, 4, 15, 23, 19, 13, 12, 2, 20, 14, 22, 9, 6, 1];

function rotl(x, n) {
  const b = BigInt(n);
  return ((x << b) | (x >> (64n - b))) & MASK64;
}

function keccakF(state) {
  const c = new Array(5);
  for (const rc of ROUND_CONSTANTS) {
    for (let i = 0; i < 5; i++) c[i] = state[i] ^ state[i + 5] ^ state[i + 10] ^ state[i + 15] ^ state[i + 20];
    for (let i = 0; i < 5; i++) {
      const d = c[(i + 4) % 5] ^ rotl(c[(i + 1) % 5], 1);
      for (let j = 0; j < 25; j += 5) state[j + i] ^= d;
    }
    let t = state[1];
    for (let i = 0; i < 24; i++) {
      const j = PI_LANES[i];
      const next = state[j];
      state[j] = rotl(t, ROTATIONS[i]);
      t = next;
    }
    for (let j = 0; j < 25; j += 5) {
      for (let i = 0; i < 5; i++) c[i] = state[j + i];
      for (let i = 0; i < 5; i++) state[j + i] ^= (~c[(i + 1) % 5] & MASK64) & c[(i + 2) % 5];
    }
    state[0] ^= rc;
  }
}

/** Keccak-256 (Ethereum's hash: the original Keccak padding, not SHA3-256's). */
export function keccak256(bytes) {
  const rate = 136;
  const padded = new Uint8Array(Math.floor(bytes.length / rate) * rate + rate);
  padded.set(bytes);
  padded[bytes.length] ^= 0x01;
  padded[padded.length - 1] ^= 0x80;
  const state = new Array(25).fill(0n);
  for (let offset = 0; offset < padded.length; offset += rate) {
    for (let lane = 0; lane < rate / 8; lane++) {
      let v = 0n;
      for (let k = 7; k >= 0; k--) v = (v << 8n) | BigInt(padded[offset + lane * 8 + k]);
      state[lane] ^= v;
    }
    keccakF(state);
  }
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = Number((state[i >> 3] >> BigInt(8 * (i & 7))) & 0xffn);
  return out;
}

// ---- bytes ------------------------------------------------------------------------------------
export function hexToBytes(hex) {
  const h = hex.startsWith('0x') || hex.startsWith('0X') ? hex.slice(2) : hex;
  if (h.length % 2 !== 0 || /[^0-9a-fA-F]/.test(h)) throw new Error('not hexadecimal');
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function bytesToHex(bytes) {
  return `0x${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function word(value) {
  const out = new Uint8Array(32);
  let v = value;
  for (let i = 31; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

function bytesToBigInt(bytes) {
  return bytes.reduce((v, b) => (v << 8n) | BigInt(b), 0n);
}

// ---- EIP-712 ----------------------------------------------------------------------------------
const DOMAIN_FIELDS = [['name', 'string'], ['version', 'string'], ['chainId', 'uint256'], ['verifyingContract', 'address'], ['salt', 'bytes32']];

function dependencies(types, primary, found = new Set()) {
  if (found.has(primary) || !types[primary]) return found;
  found.add(primary);
  for (const field of types[primary]) dependencies(types, field.type.replace(/\[\d*\]$/, ''), found);
  return found;
}

function encodeType(types, primary) {
  const [, ...rest] = [...dependencies(types, primary)];
  return [primary, ...rest.sort()].map((t) => `${t}(${types[t].map((f) => `${f.type} ${f.name}`).join(',')})`).join('');
}

function encodeValue(types, type, value) {
  if (types[type]) return hashStruct(types, type, value);
  const array = /^(.*)\[\d*\]$/.exec(type);
  if (array) return keccak256(concat(...value.map((v) => encodeValue(types, array[1], v))));
  if (type === 'string') return keccak256(new TextEncoder().encode(value));
  if (type === 'bytes') return keccak256(hexToBytes(value));
  if (type === 'bool') return word(value === true || value === 'true' ? 1n : 0n);
  if (type === 'address') return word(BigInt(value));
  const fixed = /^bytes(\d+)$/.exec(type);
  if (fixed) {
    const out = new Uint8Array(32);
    out.set(hexToBytes(value).slice(0, Number(fixed[1])));
    return out;
  }
  const int = /^(u?)int(\d*)$/.exec(type);
  if (int) {
    const bits = BigInt(int[2] || 256);
    const v = BigInt(value);
    return word(int[1] === 'u' ? v : BigInt.asUintN(256, BigInt.asIntN(Number(bits), v)));
  }
  throw new Error(`unsupported EIP-712 type ${type}`);
}

function hashStruct(types, primary, data) {
  const typeHash = keccak256(new TextEncoder().encode(encodeType(types, primary)));
  return keccak256(concat(typeHash, ...types[primary].map((f) => encodeValue(types, f.type, data[f.name]))));
}

/** The 32-byte digest a signer signs for typed data `{ domain, types, primaryType, message }`. */
export function typedDataDigest(typedData) {
  const domainType = DOMAIN_FIELDS.filter(([name]) => typedData.domain[name] !== undefined).map(([name, type]) => ({ name, type }));
  const types = { ...typedData.types, EIP712Domain: domainType };
  return keccak256(concat(new Uint8Array([0x19, 0x01]), hashStruct(types, 'EIP712Domain', typedData.domain),
    hashStruct(types, typedData.primaryType, typedData.message)));
}

// ---- secp256k1 --------------------------------------------------------------------------------
const P = 2n ** 256n - 2n ** 32n - 977n;
const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
const G = [0x79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798n, 0x483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8n, 1n];

const mod = (a, m = P) => ((a % m) + m) % m;

function pow(base, exp, m) {
  let result = 1n;
  let b = mod(base, m);
  for (let e = exp; e > 0n; e >>= 1n) {
    if (e & 1n) result = (result * b) % m;
    b = (b * b) % m;
  }
  return result;
}

// Jacobian coordinates [X, Y, Z]; Z = 0 is the point at infinity.
function double([x, y, z]) {
  if (z === 0n || y === 0n) return [0n, 1n, 0n];
  const a = mod(x * x);
  const b = mod(y * y);
  const c = mod(b * b);
  const d = mod(2n * (mod((x + b) ** 2n) - a - c));
  const e = mod(3n * a);
  const x3 = mod(e * e - 2n * d);
  return [x3, mod(e * (d - x3) - 8n * c), mod(2n * y * z)];
}

function add(p1, p2) {
  if (p1[2] === 0n) return p2;
  if (p2[2] === 0n) return p1;
  const z1z1 = mod(p1[2] * p1[2]);
  const z2z2 = mod(p2[2] * p2[2]);
  const u1 = mod(p1[0] * z2z2);
  const u2 = mod(p2[0] * z1z1);
  const s1 = mod(p1[1] * p2[2] * z2z2);
  const s2 = mod(p2[1] * p1[2] * z1z1);
  const h = mod(u2 - u1);
  const r = mod(s2 - s1);
  if (h === 0n) return r === 0n ? double(p1) : [0n, 1n, 0n];
  const h2 = mod(h * h);
  const h3 = mod(h * h2);
  const u1h2 = mod(u1 * h2);
  const x3 = mod(r * r - h3 - 2n * u1h2);
  return [x3, mod(r * (u1h2 - x3) - s1 * h3), mod(h * p1[2] * p2[2])];
}

function multiply(point, scalar) {
  let result = [0n, 1n, 0n];
  for (let i = 255n; i >= 0n; i--) {
    result = double(result);
    if ((scalar >> i) & 1n) result = add(result, point);
  }
  return result;
}

function affine([x, y, z]) {
  const zi = pow(z, P - 2n, P);
  return [mod(x * zi * zi), mod(y * zi * zi * zi)];
}

/** An address with its EIP-55 mixed-case checksum. */
export function checksumAddress(address) {
  const lower = address.toLowerCase().replace(/^0x/, '');
  const hash = bytesToHex(keccak256(new TextEncoder().encode(lower))).slice(2);
  return `0x${[...lower].map((ch, i) => (parseInt(hash[i], 16) >= 8 ? ch.toUpperCase() : ch)).join('')}`;
}

/**
 * The address whose key made `signature` (65 bytes hex: r, s, v) over `digest`. Throws for a
 * signature that is not well formed, or not in the low-s form the chain accepts (EIP-2).
 */
export function recoverAddress(digest, signature) {
  let sig;
  try {
    sig = hexToBytes(signature.trim());
  } catch {
    throw new Error('A signature is written in hexadecimal, starting with 0x.');
  }
  if (sig.length !== 65) throw new Error(`A signature is 65 bytes (132 characters with 0x); this one is ${sig.length} bytes.`);
  const r = bytesToBigInt(sig.slice(0, 32));
  const s = bytesToBigInt(sig.slice(32, 64));
  const v = sig[64] >= 27 ? sig[64] - 27 : sig[64];
  if (r === 0n || r >= N || s === 0n || s > N / 2n || (v !== 0 && v !== 1)) throw new Error('This is not a valid signature.');
  const y2 = mod(r ** 3n + 7n);
  let y = pow(y2, (P + 1n) / 4n, P);
  if (mod(y * y) !== y2) throw new Error('This is not a valid signature.');
  if (Number(y & 1n) !== v) y = P - y;
  const e = mod(bytesToBigInt(digest), N);
  const rInv = pow(r, N - 2n, N);
  // Q = r⁻¹ (s·R − e·G)
  const q = add(multiply([r, y, 1n], mod(s * rInv, N)), multiply(G, mod(-e * rInv, N)));
  if (q[2] === 0n) throw new Error('This is not a valid signature.');
  const [qx, qy] = affine(q);
  return checksumAddress(bytesToHex(keccak256(concat(word(qx), word(qy))).slice(12)));
}

/** The address that signed typed data with `eth_signTypedData_v4` (or ethers' signTypedData). */
export function recoverTypedDataSigner(typedData, signature) {
  return recoverAddress(typedDataDigest(typedData), signature);
}
