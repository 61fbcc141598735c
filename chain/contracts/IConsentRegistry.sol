// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title IConsentRegistry
/// @notice Consent grants and revocations signed by the patient's key (EIP-712) and relayed by an authority.
/// @dev Typed data over this contract's domain (see `eip712Domain()`):
///   Grant(address patient,address grantee,bytes32 scopeHash,uint64 dataFrom,uint64 dataTo,uint64 notBefore,uint64 notAfter,bytes32 purpose,uint256 nonce,uint256 deadline)
///   Revoke(bytes32 grantId,uint256 nonce,uint256 deadline)
/// `patient` must be the current key of a patient in the IdentityRegistry; a revocation is signed by the
/// patient's current key (so grants survive a key rotation and can still be revoked after it).
/// The grant id is the EIP-712 digest of the signed Grant message, so it is known before the transaction is mined.
/// Nonces are per signing key (`nonces(key)`).
interface IConsentRegistry {
    /// @notice Terms of a grant, as signed by the patient.
    struct GrantTerms {
        address patient;
        address grantee;
        /// keccak256 of the granted scope (resource types / categories), defined off chain
        bytes32 scopeHash;
        /// the data period the grantee may read: resources whose effective time is in [dataFrom, dataTo] (unix seconds)
        uint64 dataFrom;
        uint64 dataTo;
        /// validity window: active when notBefore <= block.timestamp < notAfter (unix seconds)
        uint64 notBefore;
        uint64 notAfter;
        /// purpose of use code (e.g. "TREAT"), as a bytes32 short string
        bytes32 purpose;
    }

    /// @notice A stored grant.
    struct Grant {
        GrantTerms terms;
        bytes32 patientId;
        uint64 grantedAt;
        uint64 revokedAt;
        bool revoked;
    }

    /// @notice A grant was recorded.
    event ConsentGranted(
        bytes32 indexed grantId, address indexed patient, address indexed grantee, bytes32 patientId, GrantTerms terms
    );
    /// @notice A grant was revoked.
    event ConsentRevoked(bytes32 indexed grantId, bytes32 indexed patientId, address indexed grantee, address signer);

    /// @notice The signed message's deadline has passed.
    error ConsentRegistryExpiredSignature(uint256 deadline);
    /// @notice The signature was not made by the expected key (wrong key, altered terms, or replay).
    error ConsentRegistryInvalidSigner(address signer, address expected);
    /// @notice `patient` is not the current key of a registered patient.
    error ConsentRegistryUnknownPatient(address patient);
    /// @notice The grantee is zero or the patient itself.
    error ConsentRegistryInvalidGrantee(address grantee);
    /// @notice notBefore >= notAfter, or the window has already ended.
    error ConsentRegistryInvalidWindow(uint64 notBefore, uint64 notAfter);
    /// @notice dataFrom > dataTo.
    error ConsentRegistryInvalidDataPeriod(uint64 dataFrom, uint64 dataTo);
    /// @notice No grant has this id.
    error ConsentRegistryUnknownGrant(bytes32 grantId);
    /// @notice The grant is already revoked.
    error ConsentRegistryAlreadyRevoked(bytes32 grantId);

    /// @notice Records a grant signed by `terms.patient` (AUTHORITY_ROLE only).
    /// @return grantId EIP-712 digest of the signed Grant message
    function grant(GrantTerms calldata terms, uint256 deadline, bytes calldata signature)
        external
        returns (bytes32 grantId);

    /// @notice Revokes a grant; `signature` is the patient's current key's Revoke signature (AUTHORITY_ROLE only).
    function revoke(bytes32 grantId, uint256 deadline, bytes calldata signature) external;

    /// @notice Whether the grant exists, is not revoked and block.timestamp is inside [notBefore, notAfter).
    function isActive(bytes32 grantId) external view returns (bool);

    /// @notice Returns a grant; reverts with ConsentRegistryUnknownGrant when it does not exist.
    function getGrant(bytes32 grantId) external view returns (Grant memory);

    /// @notice Next nonce of a signing key.
    function nonces(address key) external view returns (uint256);

    /// @notice The IdentityRegistry patients are resolved against.
    function identityRegistry() external view returns (address);
}
