// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IIdentityRegistry} from "./IIdentityRegistry.sol";

/// @title IdentityRegistry
/// @notice Patients and grantees registered by authorities; patient key rotation and guardian recovery.
/// @dev Signed operations may be relayed by any account: the signature is the authorisation.
contract IdentityRegistry is IIdentityRegistry, AccessControl, EIP712 {
    /// @notice Role allowed to register patients and grantees.
    bytes32 public constant AUTHORITY_ROLE = keccak256("AUTHORITY_ROLE");
    /// @notice Largest guardian set a patient may choose.
    uint256 public constant MAX_GUARDIANS = 10;

    bytes32 private constant ROTATE_KEY_TYPEHASH =
        keccak256("RotateKey(bytes32 patientId,address newKey,uint256 nonce,uint256 deadline)");
    bytes32 private constant SET_GUARDIANS_TYPEHASH = keccak256(
        "SetGuardians(bytes32 patientId,address[] guardians,uint8 threshold,uint256 nonce,uint256 deadline)"
    );
    bytes32 private constant RECOVER_TYPEHASH =
        keccak256("Recover(bytes32 patientId,address newKey,uint256 nonce,uint256 deadline)");

    struct Patient {
        address key;
        uint8 threshold;
        address[] guardians;
    }

    mapping(bytes32 patientId => Patient) private _patients;
    mapping(address key => bytes32 patientId) private _patientOf;
    // Keys ever used by a patient are never handed to another patient (a recovered key stays burnt).
    mapping(address key => bool) private _usedKeys;
    mapping(bytes32 patientId => uint256) private _nonces;
    mapping(address grantee => bytes32 ref) private _grantees;

    /// @param admin account given DEFAULT_ADMIN_ROLE and AUTHORITY_ROLE
    constructor(address admin) EIP712("GlucoGuard IdentityRegistry", "1") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(AUTHORITY_ROLE, admin);
    }

    /// @inheritdoc IIdentityRegistry
    function registerPatient(bytes32 patientId, address key) external onlyRole(AUTHORITY_ROLE) {
        if (patientId == bytes32(0)) revert IdentityRegistryInvalidPatientId();
        if (key == address(0)) revert IdentityRegistryZeroAddress();
        if (_patients[patientId].key != address(0)) revert IdentityRegistryPatientExists(patientId);
        if (_usedKeys[key]) revert IdentityRegistryKeyInUse(key);
        _patients[patientId].key = key;
        _patientOf[key] = patientId;
        _usedKeys[key] = true;
        emit PatientRegistered(patientId, key);
    }

    /// @inheritdoc IIdentityRegistry
    function registerGrantee(address grantee, bytes32 ref) external onlyRole(AUTHORITY_ROLE) {
        if (grantee == address(0)) revert IdentityRegistryZeroAddress();
        if (_grantees[grantee] != bytes32(0)) revert IdentityRegistryGranteeExists(grantee);
        // A zero ref would read as "not registered"; store a marker instead.
        _grantees[grantee] = ref == bytes32(0) ? bytes32(uint256(1)) : ref;
        emit GranteeRegistered(grantee, ref);
    }

    /// @inheritdoc IIdentityRegistry
    function removeGrantee(address grantee) external onlyRole(AUTHORITY_ROLE) {
        if (_grantees[grantee] == bytes32(0)) revert IdentityRegistryUnknownGrantee(grantee);
        delete _grantees[grantee];
        emit GranteeRemoved(grantee);
    }

    /// @inheritdoc IIdentityRegistry
    function rotateKey(bytes32 patientId, address newKey, uint256 deadline, bytes calldata signature) external {
        address oldKey = _requirePatient(patientId);
        _requireFreshKey(newKey);
        if (block.timestamp > deadline) revert IdentityRegistryExpiredSignature(deadline);
        bytes32 structHash = keccak256(abi.encode(ROTATE_KEY_TYPEHASH, patientId, newKey, _nonces[patientId], deadline));
        address signer = ECDSA.recover(_hashTypedDataV4(structHash), signature);
        if (signer != oldKey) revert IdentityRegistryInvalidSigner(signer, oldKey);
        _nonces[patientId]++;
        _replaceKey(patientId, oldKey, newKey);
        emit PatientKeyRotated(patientId, oldKey, newKey);
    }

    /// @inheritdoc IIdentityRegistry
    function setGuardians(
        bytes32 patientId,
        address[] calldata guardians,
        uint8 threshold,
        uint256 deadline,
        bytes calldata signature
    ) external {
        address key = _requirePatient(patientId);
        if (guardians.length > MAX_GUARDIANS) revert IdentityRegistryTooManyGuardians(guardians.length, MAX_GUARDIANS);
        if (guardians.length == 0 ? threshold != 0 : (threshold == 0 || threshold > guardians.length)) {
            revert IdentityRegistryInvalidThreshold(threshold, guardians.length);
        }
        for (uint256 i = 0; i < guardians.length; i++) {
            address g = guardians[i];
            if (g == address(0) || g == key) revert IdentityRegistryInvalidGuardian(g);
            for (uint256 j = 0; j < i; j++) {
                if (guardians[j] == g) revert IdentityRegistryInvalidGuardian(g);
            }
        }
        if (block.timestamp > deadline) revert IdentityRegistryExpiredSignature(deadline);
        bytes32 structHash = keccak256(
            abi.encode(
                SET_GUARDIANS_TYPEHASH,
                patientId,
                keccak256(abi.encodePacked(guardians)),
                threshold,
                _nonces[patientId],
                deadline
            )
        );
        address signer = ECDSA.recover(_hashTypedDataV4(structHash), signature);
        if (signer != key) revert IdentityRegistryInvalidSigner(signer, key);
        _nonces[patientId]++;
        _patients[patientId].guardians = guardians;
        _patients[patientId].threshold = threshold;
        emit GuardiansChanged(patientId, guardians, threshold);
    }

    /// @inheritdoc IIdentityRegistry
    function recover(bytes32 patientId, address newKey, uint256 deadline, bytes[] calldata signatures) external {
        address oldKey = _requirePatient(patientId);
        Patient storage patient = _patients[patientId];
        uint8 threshold = patient.threshold;
        if (threshold == 0) revert IdentityRegistryNoGuardians(patientId);
        _requireFreshKey(newKey);
        if (block.timestamp > deadline) revert IdentityRegistryExpiredSignature(deadline);
        if (signatures.length < threshold) revert IdentityRegistryInsufficientSignatures(signatures.length, threshold);

        bytes32 digest =
            _hashTypedDataV4(keccak256(abi.encode(RECOVER_TYPEHASH, patientId, newKey, _nonces[patientId], deadline)));
        address[] memory seen = new address[](signatures.length);
        for (uint256 i = 0; i < signatures.length; i++) {
            address signer = ECDSA.recover(digest, signatures[i]);
            if (!_isGuardian(patient.guardians, signer)) revert IdentityRegistryNotGuardian(signer);
            for (uint256 j = 0; j < i; j++) {
                if (seen[j] == signer) revert IdentityRegistryDuplicateGuardian(signer);
            }
            seen[i] = signer;
        }
        _nonces[patientId]++;
        _replaceKey(patientId, oldKey, newKey);
        emit PatientKeyRecovered(patientId, oldKey, newKey);
    }

    /// @inheritdoc IIdentityRegistry
    function patientKey(bytes32 patientId) external view returns (address) {
        return _patients[patientId].key;
    }

    /// @inheritdoc IIdentityRegistry
    function patientOf(address key) external view returns (bytes32) {
        return _patientOf[key];
    }

    /// @inheritdoc IIdentityRegistry
    function guardiansOf(bytes32 patientId) external view returns (address[] memory guardians, uint8 threshold) {
        Patient storage patient = _patients[patientId];
        return (patient.guardians, patient.threshold);
    }

    /// @inheritdoc IIdentityRegistry
    function nonces(bytes32 patientId) external view returns (uint256) {
        return _nonces[patientId];
    }

    /// @inheritdoc IIdentityRegistry
    function isGrantee(address grantee) external view returns (bool) {
        return _grantees[grantee] != bytes32(0);
    }

    /// @inheritdoc IIdentityRegistry
    function granteeRef(address grantee) external view returns (bytes32) {
        bytes32 ref = _grantees[grantee];
        return ref == bytes32(uint256(1)) ? bytes32(0) : ref;
    }

    function _requirePatient(bytes32 patientId) private view returns (address key) {
        key = _patients[patientId].key;
        if (key == address(0)) revert IdentityRegistryUnknownPatient(patientId);
    }

    function _requireFreshKey(address key) private view {
        if (key == address(0)) revert IdentityRegistryZeroAddress();
        if (_usedKeys[key]) revert IdentityRegistryKeyInUse(key);
    }

    function _replaceKey(bytes32 patientId, address oldKey, address newKey) private {
        delete _patientOf[oldKey];
        _patientOf[newKey] = patientId;
        _usedKeys[newKey] = true;
        _patients[patientId].key = newKey;
    }

    function _isGuardian(address[] storage guardians, address account) private view returns (bool) {
        for (uint256 i = 0; i < guardians.length; i++) {
            if (guardians[i] == account) return true;
        }
        return false;
    }
}
