// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title IResourceAnchor
/// @notice Append-only register of Merkle roots over salted commitments of stored FHIR resource versions.
/// @dev Each authority numbers its leaves with a contiguous sequence; a batch covers `[firstSeq, lastSeq]`
/// and must start where that authority's previous batch ended, so no leaf is skipped or anchored twice.
interface IResourceAnchor {
    /// @notice One anchored batch. Never changes once written.
    struct Batch {
        bytes32 merkleRoot;
        address authority;
        uint64 leafCount;
        uint64 firstSeq;
        uint64 lastSeq;
        uint64 anchoredAt;
        uint64 blockNumber;
    }

    /// @notice Emitted once per anchored batch.
    event BatchAnchored(
        uint256 indexed batchId,
        bytes32 indexed merkleRoot,
        address indexed authority,
        uint64 leafCount,
        uint64 firstSeq,
        uint64 lastSeq
    );

    /// @notice The Merkle root is zero.
    error ResourceAnchorEmptyRoot();
    /// @notice `leafCount` is zero or does not equal `lastSeq - firstSeq + 1`.
    error ResourceAnchorInvalidRange(uint64 firstSeq, uint64 lastSeq, uint64 leafCount);
    /// @notice The batch does not start at the authority's next sequence number.
    error ResourceAnchorSequenceMismatch(address authority, uint64 expectedFirstSeq, uint64 firstSeq);
    /// @notice The same Merkle root was already anchored in `batchId`.
    error ResourceAnchorDuplicateRoot(bytes32 merkleRoot, uint256 batchId);
    /// @notice No batch has this id.
    error ResourceAnchorUnknownBatch(uint256 batchId);

    /// @notice Anchors one batch; only callable by an account holding AUTHORITY_ROLE.
    /// @param merkleRoot root of the batch's Merkle tree (non-zero, never anchored before)
    /// @param leafCount number of leaves (commitments) in the batch
    /// @param firstSeq sequence number of the first leaf; must equal `nextSeq(msg.sender)`
    /// @param lastSeq sequence number of the last leaf
    /// @return batchId the new batch's id (ids start at 1)
    function anchor(bytes32 merkleRoot, uint64 leafCount, uint64 firstSeq, uint64 lastSeq)
        external
        returns (uint256 batchId);

    /// @notice Returns a batch; reverts with ResourceAnchorUnknownBatch when it does not exist.
    function getBatch(uint256 batchId) external view returns (Batch memory);

    /// @notice Id of the batch that anchored `merkleRoot`, or 0 when the root is unknown.
    function batchIdOfRoot(bytes32 merkleRoot) external view returns (uint256);

    /// @notice Number of batches anchored so far (the id of the latest batch).
    function batchCount() external view returns (uint256);

    /// @notice The sequence number the authority's next batch must start at.
    function nextSeq(address authority) external view returns (uint64);
}
