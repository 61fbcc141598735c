// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IConsentRegistry} from "./IConsentRegistry.sol";
import {IIdentityRegistry} from "./IIdentityRegistry.sol";

/// @title ConsentRegistry
/// @notice Patient-signed, time-bound consent grants relayed by authorities.
contract ConsentRegistry is IConsentRegistry, AccessControl, EIP712 {
    /// @notice Role allowed to relay grants and revocations.
    bytes32 public constant AUTHORITY_ROLE = keccak256("AUTHORITY_ROLE");

    bytes32 private constant GRANT_TYPEHASH = keccak256(
        "Grant(address patient,address grantee,bytes32 scopeHash,uint64 dataFrom,uint64 dataTo,uint64 notBefore,uint64 notAfter,bytes32 purpose,uint256 nonce,uint256 deadline)"
    );
    bytes32 private constant REVOKE_TYPEHASH = keccak256("Revoke(bytes32 grantId,uint256 nonce,uint256 deadline)");

    IIdentityRegistry private immutable _identity;
    mapping(bytes32 grantId => Grant) private _grants;
    mapping(address key => uint256) private _nonces;

    /// @param admin account given DEFAULT_ADMIN_ROLE and AUTHORITY_ROLE
    /// @param identity the IdentityRegistry that knows patients' current keys
    constructor(address admin, IIdentityRegistry identity) EIP712("GlucoGuard ConsentRegistry", "1") {
        _identity = identity;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(AUTHORITY_ROLE, admin);
    }

    /// @inheritdoc IConsentRegistry
    function grant(GrantTerms calldata terms, uint256 deadline, bytes calldata signature)
        external
        onlyRole(AUTHORITY_ROLE)
        returns (bytes32 grantId)
    {
        bytes32 patientId = _identity.patientOf(terms.patient);
        if (patientId == bytes32(0)) revert ConsentRegistryUnknownPatient(terms.patient);
        if (terms.grantee == address(0) || terms.grantee == terms.patient) {
            revert ConsentRegistryInvalidGrantee(terms.grantee);
        }
        if (terms.notBefore >= terms.notAfter || terms.notAfter <= block.timestamp) {
            revert ConsentRegistryInvalidWindow(terms.notBefore, terms.notAfter);
        }
        if (terms.dataFrom > terms.dataTo) revert ConsentRegistryInvalidDataPeriod(terms.dataFrom, terms.dataTo);
        if (block.timestamp > deadline) revert ConsentRegistryExpiredSignature(deadline);

        grantId = _hashTypedDataV4(keccak256(abi.encode(GRANT_TYPEHASH, terms, _nonces[terms.patient], deadline)));
        address signer = ECDSA.recover(grantId, signature);
        if (signer != terms.patient) revert ConsentRegistryInvalidSigner(signer, terms.patient);
        _nonces[terms.patient]++;

        Grant storage stored = _grants[grantId];
        stored.terms = terms;
        stored.patientId = patientId;
        stored.grantedAt = uint64(block.timestamp);
        emit ConsentGranted(grantId, terms.patient, terms.grantee, patientId, terms);
    }

    /// @inheritdoc IConsentRegistry
    function revoke(bytes32 grantId, uint256 deadline, bytes calldata signature) external onlyRole(AUTHORITY_ROLE) {
        Grant storage stored = _grants[grantId];
        if (stored.grantedAt == 0) revert ConsentRegistryUnknownGrant(grantId);
        if (stored.revoked) revert ConsentRegistryAlreadyRevoked(grantId);
        if (block.timestamp > deadline) revert ConsentRegistryExpiredSignature(deadline);

        address expected = _identity.patientKey(stored.patientId);
        bytes32 structHash = keccak256(abi.encode(REVOKE_TYPEHASH, grantId, _nonces[expected], deadline));
        address signer = ECDSA.recover(_hashTypedDataV4(structHash), signature);
        if (signer != expected) revert ConsentRegistryInvalidSigner(signer, expected);
        _nonces[expected]++;

        stored.revoked = true;
        stored.revokedAt = uint64(block.timestamp);
        emit ConsentRevoked(grantId, stored.patientId, stored.terms.grantee, signer);
    }

    /// @inheritdoc IConsentRegistry
    function isActive(bytes32 grantId) external view returns (bool) {
        Grant storage stored = _grants[grantId];
        return stored.grantedAt != 0 && !stored.revoked && stored.terms.notBefore <= block.timestamp
            && block.timestamp < stored.terms.notAfter;
    }

    /// @inheritdoc IConsentRegistry
    function getGrant(bytes32 grantId) external view returns (Grant memory) {
        Grant storage stored = _grants[grantId];
        if (stored.grantedAt == 0) revert ConsentRegistryUnknownGrant(grantId);
        return stored;
    }

    /// @inheritdoc IConsentRegistry
    function nonces(address key) external view returns (uint256) {
        return _nonces[key];
    }

    /// @inheritdoc IConsentRegistry
    function identityRegistry() external view returns (address) {
        return address(_identity);
    }
}
