// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title IIdentityRegistry
/// @notice Pseudonymous identities: patients (a stable `patientId` with a current signing key, key rotation
/// signed by the old key, recovery by M-of-N guardians chosen by the patient) and grantees (addresses of
/// practitioners, organisations or apps). The mapping to FHIR resources stays off chain.
/// @dev Signed operations use EIP-712 typed data over this contract's domain (see `eip712Domain()`):
///   RotateKey(bytes32 patientId,address newKey,uint256 nonce,uint256 deadline)            signed by the current key
///   SetGuardians(bytes32 patientId,address[] guardians,uint8 threshold,uint256 nonce,uint256 deadline)  signed by the current key
///   Recover(bytes32 patientId,address newKey,uint256 nonce,uint256 deadline)              signed by `threshold` guardians
/// All three share one nonce per patient (`nonces(patientId)`), so any signed message can be used at most once.
interface IIdentityRegistry {
    /// @notice A patient was registered with its first key.
    event PatientRegistered(bytes32 indexed patientId, address indexed key);
    /// @notice The patient's key was rotated by a signature of the old key.
    event PatientKeyRotated(bytes32 indexed patientId, address indexed oldKey, address indexed newKey);
    /// @notice The patient's key was replaced by its guardians.
    event PatientKeyRecovered(bytes32 indexed patientId, address indexed oldKey, address indexed newKey);
    /// @notice The patient's guardian set changed.
    event GuardiansChanged(bytes32 indexed patientId, address[] guardians, uint8 threshold);
    /// @notice A grantee address was registered.
    event GranteeRegistered(address indexed grantee, bytes32 indexed ref);
    /// @notice A grantee address was removed.
    event GranteeRemoved(address indexed grantee);

    /// @notice An address argument is the zero address.
    error IdentityRegistryZeroAddress();
    /// @notice The patient id is zero.
    error IdentityRegistryInvalidPatientId();
    /// @notice The patient id is already registered.
    error IdentityRegistryPatientExists(bytes32 patientId);
    /// @notice The patient id is not registered.
    error IdentityRegistryUnknownPatient(bytes32 patientId);
    /// @notice The key is already the key of a patient, or was one before.
    error IdentityRegistryKeyInUse(address key);
    /// @notice The grantee is already registered.
    error IdentityRegistryGranteeExists(address grantee);
    /// @notice The grantee is not registered.
    error IdentityRegistryUnknownGrantee(address grantee);
    /// @notice The signed message's deadline has passed.
    error IdentityRegistryExpiredSignature(uint256 deadline);
    /// @notice The signature was not made by the expected key (wrong key, altered message, or replay).
    error IdentityRegistryInvalidSigner(address signer, address expected);
    /// @notice Threshold is zero or larger than the number of guardians.
    error IdentityRegistryInvalidThreshold(uint8 threshold, uint256 guardianCount);
    /// @notice More guardians than MAX_GUARDIANS.
    error IdentityRegistryTooManyGuardians(uint256 count, uint256 max);
    /// @notice A guardian is zero, repeated, or the patient's own key.
    error IdentityRegistryInvalidGuardian(address guardian);
    /// @notice The patient has no guardians, so recovery is impossible.
    error IdentityRegistryNoGuardians(bytes32 patientId);
    /// @notice A recovery signature is not from one of the patient's guardians.
    error IdentityRegistryNotGuardian(address signer);
    /// @notice Two recovery signatures come from the same guardian.
    error IdentityRegistryDuplicateGuardian(address guardian);
    /// @notice Fewer guardian signatures than the threshold.
    error IdentityRegistryInsufficientSignatures(uint256 count, uint8 threshold);

    /// @notice Registers a patient with its first key (AUTHORITY_ROLE only).
    function registerPatient(bytes32 patientId, address key) external;

    /// @notice Registers a grantee address with an opaque off-chain reference (AUTHORITY_ROLE only).
    function registerGrantee(address grantee, bytes32 ref) external;

    /// @notice Removes a grantee address (AUTHORITY_ROLE only).
    function removeGrantee(address grantee) external;

    /// @notice Replaces the patient's key with `newKey`; `signature` is the current key's RotateKey signature.
    function rotateKey(bytes32 patientId, address newKey, uint256 deadline, bytes calldata signature) external;

    /// @notice Sets the patient's guardians and recovery threshold; signed by the current key (SetGuardians).
    /// An empty list with threshold 0 removes all guardians.
    function setGuardians(
        bytes32 patientId,
        address[] calldata guardians,
        uint8 threshold,
        uint256 deadline,
        bytes calldata signature
    ) external;

    /// @notice Replaces a lost patient key; `signatures` are Recover signatures of at least `threshold` guardians.
    function recover(bytes32 patientId, address newKey, uint256 deadline, bytes[] calldata signatures) external;

    /// @notice Current key of the patient, or the zero address when unknown.
    function patientKey(bytes32 patientId) external view returns (address);

    /// @notice Patient id whose current key is `key`, or zero when `key` is not a current patient key.
    function patientOf(address key) external view returns (bytes32);

    /// @notice The patient's guardians and recovery threshold.
    function guardiansOf(bytes32 patientId) external view returns (address[] memory guardians, uint8 threshold);

    /// @notice Next nonce for signed messages about the patient.
    function nonces(bytes32 patientId) external view returns (uint256);

    /// @notice Whether `grantee` is registered.
    function isGrantee(address grantee) external view returns (bool);

    /// @notice Off-chain reference of a registered grantee (zero when not registered).
    function granteeRef(address grantee) external view returns (bytes32);
}
