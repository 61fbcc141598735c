/**
 * ResourceAnchor, IdentityRegistry and ConsentRegistry on the embedded node, through ethers: every
 * custom error, event, replay, expiry, role check, rotation and recovery path.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { BaseWallet, Contract, TypedDataEncoder, Wallet, ZeroAddress, ZeroHash, encodeBytes32String, id, type LogDescription, type TypedDataDomain } from 'ethers';
import { advanceChainTime, chainTime, revertOf, startTestChain, type TestChain } from './helpers.js';

let t: TestChain;
let anchor: Contract;
let identity: Contract;
let consent: Contract;

beforeAll(async () => {
  t = await startTestChain();
  anchor = t.contract('ResourceAnchor');
  identity = t.contract('IdentityRegistry');
  consent = t.contract('ConsentRegistry');
});
afterAll(async () => t.stop());

/** Sends a transaction and returns the events it emitted, decoded with the contract's ABI. */
async function send(c: Contract, method: string, ...args: unknown[]): Promise<LogDescription[]> {
  const tx = await c.getFunction(method)(...args);
  const receipt = await tx.wait();
  expect(receipt.status).toBe(1);
  return receipt.logs.map((l: never) => c.interface.parseLog(l)).filter((x: LogDescription | null): x is LogDescription => x !== null);
}

async function fundedWallet(): Promise<BaseWallet> {
  const w = Wallet.createRandom().connect(t.provider);
  await (await t.authority.sendTransaction({ to: w.address, value: 10n ** 18n })).wait();
  return w;
}

async function domainOf(c: Contract): Promise<TypedDataDomain> {
  const [, name, version, chainId, verifyingContract] = await c.eip712Domain();
  return { name, version, chainId, verifyingContract };
}

const AUTHORITY_ROLE = id('AUTHORITY_ROLE');

describe('ResourceAnchor', () => {
  it('anchors a batch, emits BatchAnchored with the batch id and keeps it readable', async () => {
    const root = id('batch-1');
    const events = await send(anchor, 'anchor', root, 3, 0, 2);
    expect(events.map((e) => e.name)).toEqual(['BatchAnchored']);
    expect(events[0]!.args.batchId).toBe(1n);
    expect(events[0]!.args.merkleRoot).toBe(root);
    expect(events[0]!.args.authority).toBe(t.authority.address);
    const batch = await anchor.getBatch(1);
    expect([batch.merkleRoot, batch.authority, batch.leafCount, batch.firstSeq, batch.lastSeq]).toEqual([root, t.authority.address, 3n, 0n, 2n]);
    expect(batch.blockNumber).toBe(BigInt(await t.provider.getBlockNumber()));
    expect(await anchor.batchIdOfRoot(root)).toBe(1n);
    expect(await anchor.batchCount()).toBe(1n);
    expect(await anchor.nextSeq(t.authority.address)).toBe(3n);
  });

  it('rejects a zero root, a bad range, a sequence gap or overlap, and a root anchored before', async () => {
    expect((await revertOf(() => anchor.anchor.staticCall(ZeroHash, 1, 3, 3))).name).toBe('ResourceAnchorEmptyRoot');
    expect(await revertOf(() => anchor.anchor.staticCall(id('r'), 0, 3, 3))).toEqual({ name: 'ResourceAnchorInvalidRange', args: [3n, 3n, 0n] });
    expect((await revertOf(() => anchor.anchor.staticCall(id('r'), 2, 3, 3))).name).toBe('ResourceAnchorInvalidRange');
    expect((await revertOf(() => anchor.anchor.staticCall(id('r'), 1, 4, 3))).name).toBe('ResourceAnchorInvalidRange');
    expect(await revertOf(() => anchor.anchor.staticCall(id('r'), 1, 5, 5)))
      .toEqual({ name: 'ResourceAnchorSequenceMismatch', args: [t.authority.address, 3n, 5n] });
    expect((await revertOf(() => anchor.anchor.staticCall(id('r'), 1, 2, 2))).name).toBe('ResourceAnchorSequenceMismatch');
    expect(await revertOf(() => anchor.anchor.staticCall(id('batch-1'), 1, 3, 3)))
      .toEqual({ name: 'ResourceAnchorDuplicateRoot', args: [id('batch-1'), 1n] });
  });

  it('reverts reads of unknown batches', async () => {
    expect(await revertOf(() => anchor.getBatch(0))).toEqual({ name: 'ResourceAnchorUnknownBatch', args: [0n] });
    expect((await revertOf(() => anchor.getBatch(99))).name).toBe('ResourceAnchorUnknownBatch');
    expect(await anchor.batchIdOfRoot(id('never'))).toBe(0n);
  });

  it('lets only authorities anchor; authorities are granted and revoked by the admin with events', async () => {
    const other = await fundedWallet();
    const asOther = anchor.connect(other) as Contract;
    expect(await revertOf(() => asOther.anchor.staticCall(id('o'), 1, 0, 0)))
      .toEqual({ name: 'AccessControlUnauthorizedAccount', args: [other.address, AUTHORITY_ROLE] });
    expect((await revertOf(() => (anchor.connect(other) as Contract).grantRole.staticCall(AUTHORITY_ROLE, other.address))).name)
      .toBe('AccessControlUnauthorizedAccount');

    const granted = await send(anchor, 'grantRole', AUTHORITY_ROLE, other.address);
    expect(granted.map((e) => [e.name, e.args.role, e.args.account])).toEqual([['RoleGranted', AUTHORITY_ROLE, other.address]]);
    // each authority numbers its own leaves from 0
    const events = await send(asOther, 'anchor', id('o-1'), 1, 0, 0);
    expect(events[0]!.args.authority).toBe(other.address);

    const revoked = await send(anchor, 'revokeRole', AUTHORITY_ROLE, other.address);
    expect(revoked.map((e) => e.name)).toEqual(['RoleRevoked']);
    expect((await revertOf(() => asOther.anchor.staticCall(id('o-2'), 1, 1, 1))).name).toBe('AccessControlUnauthorizedAccount');
  });

  it('a reverted send carries revert data that decodes to the custom error', async () => {
    let data: string | undefined;
    try {
      await anchor.anchor(ZeroHash, 1, 3, 3);
    } catch (err) {
      data = (err as { data?: string }).data;
    }
    expect(anchor.interface.parseError(data!)?.name).toBe('ResourceAnchorEmptyRoot');
  });
});

describe('IdentityRegistry', () => {
  const rotateTypes = { RotateKey: [
    { name: 'patientId', type: 'bytes32' }, { name: 'newKey', type: 'address' }, { name: 'nonce', type: 'uint256' }, { name: 'deadline', type: 'uint256' },
  ] };
  const guardianTypes = { SetGuardians: [
    { name: 'patientId', type: 'bytes32' }, { name: 'guardians', type: 'address[]' }, { name: 'threshold', type: 'uint8' },
    { name: 'nonce', type: 'uint256' }, { name: 'deadline', type: 'uint256' },
  ] };
  const recoverTypes = { Recover: rotateTypes.RotateKey };

  async function newPatient(): Promise<{ patientId: string; key: BaseWallet }> {
    const patientId = id(`patient-${Math.random()}`);
    const key = Wallet.createRandom();
    await send(identity, 'registerPatient', patientId, key.address);
    return { patientId, key };
  }

  async function signRotate(signer: BaseWallet, patientId: string, newKey: string, deadline: number, nonce?: bigint): Promise<string> {
    const n = nonce ?? (await identity.nonces(patientId));
    return signer.signTypedData(await domainOf(identity), rotateTypes, { patientId, newKey, nonce: n, deadline });
  }

  it('registers patients with an event and refuses bad or duplicate registrations', async () => {
    const patientId = id('p-reg');
    const key = Wallet.createRandom();
    const events = await send(identity, 'registerPatient', patientId, key.address);
    expect(events.map((e) => [e.name, e.args.patientId, e.args.key])).toEqual([['PatientRegistered', patientId, key.address]]);
    expect(await identity.patientKey(patientId)).toBe(key.address);
    expect(await identity.patientOf(key.address)).toBe(patientId);

    expect((await revertOf(() => identity.registerPatient.staticCall(ZeroHash, Wallet.createRandom().address))).name).toBe('IdentityRegistryInvalidPatientId');
    expect((await revertOf(() => identity.registerPatient.staticCall(id('p2'), ZeroAddress))).name).toBe('IdentityRegistryZeroAddress');
    expect(await revertOf(() => identity.registerPatient.staticCall(patientId, Wallet.createRandom().address)))
      .toEqual({ name: 'IdentityRegistryPatientExists', args: [patientId] });
    expect(await revertOf(() => identity.registerPatient.staticCall(id('p3'), key.address)))
      .toEqual({ name: 'IdentityRegistryKeyInUse', args: [key.address] });
  });

  it('only authorities register patients and grantees', async () => {
    const other = await fundedWallet();
    const asOther = identity.connect(other) as Contract;
    expect((await revertOf(() => asOther.registerPatient.staticCall(id('x'), other.address))).name).toBe('AccessControlUnauthorizedAccount');
    expect((await revertOf(() => asOther.registerGrantee.staticCall(other.address, id('ref')))).name).toBe('AccessControlUnauthorizedAccount');
    expect((await revertOf(() => asOther.removeGrantee.staticCall(other.address))).name).toBe('AccessControlUnauthorizedAccount');
  });

  it('registers and removes grantees with events', async () => {
    const grantee = Wallet.createRandom().address;
    expect((await send(identity, 'registerGrantee', grantee, id('Practitioner/1'))).map((e) => e.name)).toEqual(['GranteeRegistered']);
    expect(await identity.isGrantee(grantee)).toBe(true);
    expect(await identity.granteeRef(grantee)).toBe(id('Practitioner/1'));
    expect(await revertOf(() => identity.registerGrantee.staticCall(grantee, id('again')))).toEqual({ name: 'IdentityRegistryGranteeExists', args: [grantee] });
    expect((await revertOf(() => identity.registerGrantee.staticCall(ZeroAddress, id('z')))).name).toBe('IdentityRegistryZeroAddress');
    expect((await send(identity, 'removeGrantee', grantee)).map((e) => e.name)).toEqual(['GranteeRemoved']);
    expect(await identity.isGrantee(grantee)).toBe(false);
    expect(await revertOf(() => identity.removeGrantee.staticCall(grantee))).toEqual({ name: 'IdentityRegistryUnknownGrantee', args: [grantee] });
  });

  it('rotates a key on the old key\'s signature and rejects replay, wrong signer, expiry and used keys', async () => {
    const { patientId, key } = await newPatient();
    const next = Wallet.createRandom();
    const deadline = (await chainTime(t.provider)) + 3600;

    const forged = await signRotate(next, patientId, next.address, deadline);
    expect(await revertOf(() => identity.rotateKey.staticCall(patientId, next.address, deadline, forged)))
      .toEqual({ name: 'IdentityRegistryInvalidSigner', args: [next.address, key.address] });

    const expired = (await chainTime(t.provider)) - 1;
    const late = await signRotate(key, patientId, next.address, expired);
    expect(await revertOf(() => identity.rotateKey.staticCall(patientId, next.address, expired, late)))
      .toEqual({ name: 'IdentityRegistryExpiredSignature', args: [BigInt(expired)] });

    const sig = await signRotate(key, patientId, next.address, deadline);
    const events = await send(identity, 'rotateKey', patientId, next.address, deadline, sig);
    expect(events.map((e) => [e.name, e.args.patientId, e.args.oldKey, e.args.newKey])).toEqual([['PatientKeyRotated', patientId, key.address, next.address]]);
    expect(await identity.patientKey(patientId)).toBe(next.address);
    expect(await identity.patientOf(key.address)).toBe(ZeroHash);
    expect(await identity.nonces(patientId)).toBe(1n);

    // replaying the same signature: the nonce moved on, so it no longer recovers the current key
    expect((await revertOf(() => identity.rotateKey.staticCall(patientId, next.address, deadline, sig))).name).toBe('IdentityRegistryKeyInUse');
    const third = Wallet.createRandom();
    const replay = await signRotate(key, patientId, third.address, deadline, 0n);
    expect((await revertOf(() => identity.rotateKey.staticCall(patientId, third.address, deadline, replay))).name).toBe('IdentityRegistryInvalidSigner');
    // an old key cannot be reused by anyone
    const back = await signRotate(next, patientId, key.address, deadline);
    expect(await revertOf(() => identity.rotateKey.staticCall(patientId, key.address, deadline, back)))
      .toEqual({ name: 'IdentityRegistryKeyInUse', args: [key.address] });
    expect(await revertOf(() => identity.rotateKey.staticCall(id('nobody'), third.address, deadline, back)))
      .toEqual({ name: 'IdentityRegistryUnknownPatient', args: [id('nobody')] });
  });

  it('sets guardians on the patient\'s signature and validates the set', async () => {
    const { patientId, key } = await newPatient();
    const gs = [Wallet.createRandom(), Wallet.createRandom(), Wallet.createRandom()].map((w) => w.address);
    const deadline = (await chainTime(t.provider)) + 3600;
    const sign = async (signer: BaseWallet, guardians: string[], threshold: number) =>
      signer.signTypedData(await domainOf(identity), guardianTypes, { patientId, guardians, threshold, nonce: await identity.nonces(patientId), deadline });

    expect(await revertOf(async () => identity.setGuardians.staticCall(patientId, gs, 0, deadline, await sign(key, gs, 0))))
      .toEqual({ name: 'IdentityRegistryInvalidThreshold', args: [0n, 3n] });
    expect((await revertOf(async () => identity.setGuardians.staticCall(patientId, gs, 4, deadline, await sign(key, gs, 4)))).name).toBe('IdentityRegistryInvalidThreshold');
    const dup = [gs[0]!, gs[0]!];
    expect(await revertOf(async () => identity.setGuardians.staticCall(patientId, dup, 1, deadline, await sign(key, dup, 1))))
      .toEqual({ name: 'IdentityRegistryInvalidGuardian', args: [gs[0]] });
    const own = [key.address];
    expect((await revertOf(async () => identity.setGuardians.staticCall(patientId, own, 1, deadline, await sign(key, own, 1)))).name).toBe('IdentityRegistryInvalidGuardian');
    const many = Array.from({ length: 11 }, () => Wallet.createRandom().address);
    expect(await revertOf(async () => identity.setGuardians.staticCall(patientId, many, 1, deadline, await sign(key, many, 1))))
      .toEqual({ name: 'IdentityRegistryTooManyGuardians', args: [11n, 10n] });
    const stranger = Wallet.createRandom();
    expect((await revertOf(async () => identity.setGuardians.staticCall(patientId, gs, 2, deadline, await sign(stranger, gs, 2)))).name)
      .toBe('IdentityRegistryInvalidSigner');

    const events = await send(identity, 'setGuardians', patientId, gs, 2, deadline, await sign(key, gs, 2));
    expect(events.map((e) => [e.name, [...e.args.guardians], e.args.threshold])).toEqual([['GuardiansChanged', gs, 2n]]);
    const [guardians, threshold] = await identity.guardiansOf(patientId);
    expect([[...guardians], threshold]).toEqual([gs, 2n]);
  });

  it('recovers a lost key with M-of-N guardian signatures and rejects short, foreign, duplicate and replayed sets', async () => {
    const { patientId, key } = await newPatient();
    const guardians = [Wallet.createRandom(), Wallet.createRandom(), Wallet.createRandom()];
    const gs = guardians.map((g) => g.address);
    const deadline = (await chainTime(t.provider)) + 3600;
    const newKey = Wallet.createRandom();

    // no guardians yet
    const early = await guardians[0]!.signTypedData(await domainOf(identity), recoverTypes, { patientId, newKey: newKey.address, nonce: 0n, deadline });
    expect(await revertOf(() => identity.recover.staticCall(patientId, newKey.address, deadline, [early])))
      .toEqual({ name: 'IdentityRegistryNoGuardians', args: [patientId] });

    const setSig = await key.signTypedData(await domainOf(identity), guardianTypes, { patientId, guardians: gs, threshold: 2, nonce: 0n, deadline });
    await send(identity, 'setGuardians', patientId, gs, 2, deadline, setSig);

    const sign = async (w: BaseWallet, d = deadline) =>
      w.signTypedData(await domainOf(identity), recoverTypes, { patientId, newKey: newKey.address, nonce: await identity.nonces(patientId), deadline: d });
    const [s0, s1] = [await sign(guardians[0]!), await sign(guardians[1]!)];

    expect(await revertOf(() => identity.recover.staticCall(patientId, newKey.address, deadline, [s0])))
      .toEqual({ name: 'IdentityRegistryInsufficientSignatures', args: [1n, 2n] });
    const outsider = Wallet.createRandom();
    expect(await revertOf(async () => identity.recover.staticCall(patientId, newKey.address, deadline, [s0, await sign(outsider)])))
      .toEqual({ name: 'IdentityRegistryNotGuardian', args: [outsider.address] });
    expect(await revertOf(() => identity.recover.staticCall(patientId, newKey.address, deadline, [s0, s0])))
      .toEqual({ name: 'IdentityRegistryDuplicateGuardian', args: [gs[0]] });
    const past = (await chainTime(t.provider)) - 1;
    expect((await revertOf(async () => identity.recover.staticCall(patientId, newKey.address, past, [await sign(guardians[0]!, past), await sign(guardians[1]!, past)]))).name)
      .toBe('IdentityRegistryExpiredSignature');

    const events = await send(identity, 'recover', patientId, newKey.address, deadline, [s1, s0]);
    expect(events.map((e) => [e.name, e.args.oldKey, e.args.newKey])).toEqual([['PatientKeyRecovered', key.address, newKey.address]]);
    expect(await identity.patientKey(patientId)).toBe(newKey.address);

    // the same guardian signatures cannot be used again (nonce consumed)
    const again = Wallet.createRandom();
    const replayed = await guardians[0]!.signTypedData(await domainOf(identity), recoverTypes, { patientId, newKey: again.address, nonce: 0n, deadline });
    const replayed2 = await guardians[1]!.signTypedData(await domainOf(identity), recoverTypes, { patientId, newKey: again.address, nonce: 0n, deadline });
    expect((await revertOf(() => identity.recover.staticCall(patientId, again.address, deadline, [replayed, replayed2]))).name).toBe('IdentityRegistryNotGuardian');
  });
});

describe('ConsentRegistry', () => {
  const grantTypes = { Grant: [
    { name: 'patient', type: 'address' }, { name: 'grantee', type: 'address' }, { name: 'scopeHash', type: 'bytes32' },
    { name: 'dataFrom', type: 'uint64' }, { name: 'dataTo', type: 'uint64' }, { name: 'notBefore', type: 'uint64' },
    { name: 'notAfter', type: 'uint64' }, { name: 'purpose', type: 'bytes32' }, { name: 'nonce', type: 'uint256' }, { name: 'deadline', type: 'uint256' },
  ] };
  const revokeTypes = { Revoke: [{ name: 'grantId', type: 'bytes32' }, { name: 'nonce', type: 'uint256' }, { name: 'deadline', type: 'uint256' }] };

  interface Terms { patient: string; grantee: string; scopeHash: string; dataFrom: number; dataTo: number; notBefore: number; notAfter: number; purpose: string }

  async function registeredPatient(): Promise<{ patientId: string; key: BaseWallet }> {
    const patientId = id(`cp-${Math.random()}`);
    const key = Wallet.createRandom();
    await send(identity, 'registerPatient', patientId, key.address);
    return { patientId, key };
  }

  async function terms(patient: string, overrides: Partial<Terms> = {}): Promise<Terms> {
    const now = await chainTime(t.provider);
    return {
      patient, grantee: Wallet.createRandom().address, scopeHash: id('Observation?category=laboratory'),
      dataFrom: now - 86_400 * 90, dataTo: now + 86_400 * 90, notBefore: now - 10, notAfter: now + 86_400, purpose: encodeBytes32String('TREAT'),
      ...overrides,
    };
  }

  async function signGrant(signer: BaseWallet, tm: Terms, deadline: number, nonce?: bigint): Promise<{ sig: string; grantId: string }> {
    const value = { ...tm, nonce: nonce ?? (await consent.nonces(tm.patient)), deadline };
    const domain = await domainOf(consent);
    return { sig: await signer.signTypedData(domain, grantTypes, value), grantId: TypedDataEncoder.hash(domain, grantTypes, value) };
  }

  async function signRevoke(signer: BaseWallet, grantId: string, deadline: number): Promise<string> {
    return signer.signTypedData(await domainOf(consent), revokeTypes, { grantId, nonce: await consent.nonces(signer.address), deadline });
  }

  it('records a patient-signed grant relayed by an authority; the grant id is the EIP-712 digest', async () => {
    const { patientId, key } = await registeredPatient();
    const tm = await terms(key.address);
    const deadline = (await chainTime(t.provider)) + 600;
    const { sig, grantId } = await signGrant(key, tm, deadline);

    expect(await consent.grant.staticCall(tm, deadline, sig)).toBe(grantId);
    const events = await send(consent, 'grant', tm, deadline, sig);
    expect(events.map((e) => [e.name, e.args.grantId, e.args.patient, e.args.grantee, e.args.patientId])).toEqual([['ConsentGranted', grantId, key.address, tm.grantee, patientId]]);
    expect(events[0]!.args.terms.scopeHash).toBe(tm.scopeHash);
    const stored = await consent.getGrant(grantId);
    expect([stored.terms.patient, stored.terms.grantee, stored.terms.notAfter, stored.terms.purpose, stored.patientId, stored.revoked])
      .toEqual([key.address, tm.grantee, BigInt(tm.notAfter), tm.purpose, patientId, false]);
    expect(await consent.isActive(grantId)).toBe(true);
    expect(await consent.nonces(key.address)).toBe(1n);
    expect(await consent.identityRegistry()).toBe(await identity.getAddress());
  });

  it('rejects a replayed grant signature', async () => {
    const { key } = await registeredPatient();
    const tm = await terms(key.address);
    const deadline = (await chainTime(t.provider)) + 600;
    const { sig } = await signGrant(key, tm, deadline);
    await send(consent, 'grant', tm, deadline, sig);
    expect((await revertOf(() => consent.grant.staticCall(tm, deadline, sig))).name).toBe('ConsentRegistryInvalidSigner');
  });

  it('rejects expired signatures, wrong signers, unknown patients and bad terms', async () => {
    const { key } = await registeredPatient();
    const now = await chainTime(t.provider);
    const deadline = now + 600;
    const check = async (tm: Terms, signer = key, d = deadline) => revertOf(async () => consent.grant.staticCall(tm, d, (await signGrant(signer, tm, d)).sig));

    expect(await check(await terms(key.address), key, now - 1)).toEqual({ name: 'ConsentRegistryExpiredSignature', args: [BigInt(now - 1)] });
    const grantee = Wallet.createRandom();
    expect(await check(await terms(key.address, { grantee: grantee.address }), grantee))
      .toEqual({ name: 'ConsentRegistryInvalidSigner', args: [grantee.address, key.address] });
    const stranger = Wallet.createRandom();
    expect(await check(await terms(stranger.address), stranger)).toEqual({ name: 'ConsentRegistryUnknownPatient', args: [stranger.address] });
    expect(await check(await terms(key.address, { grantee: ZeroAddress }))).toEqual({ name: 'ConsentRegistryInvalidGrantee', args: [ZeroAddress] });
    expect((await check(await terms(key.address, { grantee: key.address }))).name).toBe('ConsentRegistryInvalidGrantee');
    expect(await check(await terms(key.address, { notBefore: now + 100, notAfter: now + 100 })))
      .toEqual({ name: 'ConsentRegistryInvalidWindow', args: [BigInt(now + 100), BigInt(now + 100)] });
    expect((await check(await terms(key.address, { notBefore: now - 100, notAfter: now - 50 }))).name).toBe('ConsentRegistryInvalidWindow');
    expect(await check(await terms(key.address, { dataFrom: now, dataTo: now - 1 })))
      .toEqual({ name: 'ConsentRegistryInvalidDataPeriod', args: [BigInt(now), BigInt(now - 1)] });
  });

  it('only authorities relay grants and revocations', async () => {
    const { key } = await registeredPatient();
    const other = await fundedWallet();
    const tm = await terms(key.address);
    const deadline = (await chainTime(t.provider)) + 600;
    const { sig } = await signGrant(key, tm, deadline);
    const asOther = consent.connect(other) as Contract;
    expect(await revertOf(() => asOther.grant.staticCall(tm, deadline, sig)))
      .toEqual({ name: 'AccessControlUnauthorizedAccount', args: [other.address, AUTHORITY_ROLE] });
    expect((await revertOf(() => asOther.revoke.staticCall(id('g'), deadline, sig))).name).toBe('AccessControlUnauthorizedAccount');
  });

  it('isActive honours notBefore and notAfter', async () => {
    const { key } = await registeredPatient();
    const now = await chainTime(t.provider);
    const deadline = now + 600;
    const future = await terms(key.address, { notBefore: now + 3600, notAfter: now + 7200 });
    const f = await signGrant(key, future, deadline);
    await send(consent, 'grant', future, deadline, f.sig);
    expect(await consent.isActive(f.grantId)).toBe(false);

    const soon = (await chainTime(t.provider)) + 4;
    const shortLived = await terms(key.address, { notBefore: now - 10, notAfter: soon });
    const s = await signGrant(key, shortLived, deadline);
    await send(consent, 'grant', shortLived, deadline, s.sig);
    expect(await consent.isActive(s.grantId)).toBe(true);
    await advanceChainTime(t, soon);
    expect(await consent.isActive(s.grantId)).toBe(false);
    expect(await consent.isActive(id('unknown grant'))).toBe(false);
  });

  it('revokes on the patient\'s signature, once, and refuses unknown grants and other signers', async () => {
    const { key } = await registeredPatient();
    const tm = await terms(key.address);
    const deadline = (await chainTime(t.provider)) + 600;
    const { sig, grantId } = await signGrant(key, tm, deadline);
    await send(consent, 'grant', tm, deadline, sig);

    const grantee = Wallet.createRandom();
    const wrong = await revertOf(async () => consent.revoke.staticCall(grantId, deadline, await signRevoke(grantee, grantId, deadline)));
    expect([wrong.name, wrong.args[1]]).toEqual(['ConsentRegistryInvalidSigner', key.address]);
    expect(await revertOf(async () => consent.revoke.staticCall(id('nope'), deadline, await signRevoke(key, id('nope'), deadline))))
      .toEqual({ name: 'ConsentRegistryUnknownGrant', args: [id('nope')] });
    const past = (await chainTime(t.provider)) - 1;
    expect((await revertOf(async () => consent.revoke.staticCall(grantId, past, await signRevoke(key, grantId, past)))).name).toBe('ConsentRegistryExpiredSignature');

    const revokeSig = await signRevoke(key, grantId, deadline);
    const events = await send(consent, 'revoke', grantId, deadline, revokeSig);
    expect(events.map((e) => [e.name, e.args.grantId, e.args.grantee, e.args.signer])).toEqual([['ConsentRevoked', grantId, tm.grantee, key.address]]);
    expect(await consent.isActive(grantId)).toBe(false);
    const stored = await consent.getGrant(grantId);
    expect(stored.revoked).toBe(true);
    expect(stored.revokedAt).toBeGreaterThan(0n);
    expect(await revertOf(() => consent.revoke.staticCall(grantId, deadline, revokeSig))).toEqual({ name: 'ConsentRegistryAlreadyRevoked', args: [grantId] });
    expect(await revertOf(() => consent.getGrant(id('nope')))).toEqual({ name: 'ConsentRegistryUnknownGrant', args: [id('nope')] });
  });

  it('after a key rotation the new key revokes grants made with the old one, and the old key cannot', async () => {
    const { patientId, key } = await registeredPatient();
    const tm = await terms(key.address);
    const deadline = (await chainTime(t.provider)) + 600;
    const { sig, grantId } = await signGrant(key, tm, deadline);
    await send(consent, 'grant', tm, deadline, sig);

    const next = Wallet.createRandom();
    const rotateSig = await key.signTypedData(await domainOf(identity), { RotateKey: [
      { name: 'patientId', type: 'bytes32' }, { name: 'newKey', type: 'address' }, { name: 'nonce', type: 'uint256' }, { name: 'deadline', type: 'uint256' },
    ] }, { patientId, newKey: next.address, nonce: await identity.nonces(patientId), deadline });
    await send(identity, 'rotateKey', patientId, next.address, deadline, rotateSig);
    expect(await consent.isActive(grantId)).toBe(true);

    expect((await revertOf(async () => consent.revoke.staticCall(grantId, deadline, await signRevoke(key, grantId, deadline)))).name).toBe('ConsentRegistryInvalidSigner');
    // the old key is no longer a patient key, so it cannot grant either
    const oldTerms = await terms(key.address);
    expect((await revertOf(async () => consent.grant.staticCall(oldTerms, deadline, (await signGrant(key, oldTerms, deadline)).sig))).name).toBe('ConsentRegistryUnknownPatient');

    await send(consent, 'revoke', grantId, deadline, await signRevoke(next, grantId, deadline));
    expect(await consent.isActive(grantId)).toBe(false);
  });
});
