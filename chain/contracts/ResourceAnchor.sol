// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IResourceAnchor} from "./IResourceAnchor.sol";

/// @title ResourceAnchor
/// @notice Authorities append Merkle roots of resource-version commitments; batches are immutable.
/// @dev Authorities are managed with AccessControl (RoleGranted/RoleRevoked are the change events).
contract ResourceAnchor is IResourceAnchor, AccessControl {
    /// @notice Role allowed to anchor batches.
    bytes32 public constant AUTHORITY_ROLE = keccak256("AUTHORITY_ROLE");

    Batch[] private _batches;
    mapping(bytes32 merkleRoot => uint256 batchId) private _batchIdOfRoot;
    mapping(address authority => uint64 seq) private _nextSeq;

    /// @param admin account given DEFAULT_ADMIN_ROLE and AUTHORITY_ROLE
    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(AUTHORITY_ROLE, admin);
    }

    /// @inheritdoc IResourceAnchor
    function anchor(bytes32 merkleRoot, uint64 leafCount, uint64 firstSeq, uint64 lastSeq)
        external
        onlyRole(AUTHORITY_ROLE)
        returns (uint256 batchId)
    {
        if (merkleRoot == bytes32(0)) revert ResourceAnchorEmptyRoot();
        if (leafCount == 0 || lastSeq < firstSeq || lastSeq - firstSeq + 1 != leafCount) {
            revert ResourceAnchorInvalidRange(firstSeq, lastSeq, leafCount);
        }
        uint64 expected = _nextSeq[msg.sender];
        if (firstSeq != expected) revert ResourceAnchorSequenceMismatch(msg.sender, expected, firstSeq);
        uint256 existing = _batchIdOfRoot[merkleRoot];
        if (existing != 0) revert ResourceAnchorDuplicateRoot(merkleRoot, existing);

        _batches.push(
            Batch({
                merkleRoot: merkleRoot,
                authority: msg.sender,
                leafCount: leafCount,
                firstSeq: firstSeq,
                lastSeq: lastSeq,
                anchoredAt: uint64(block.timestamp),
                blockNumber: uint64(block.number)
            })
        );
        batchId = _batches.length;
        _batchIdOfRoot[merkleRoot] = batchId;
        _nextSeq[msg.sender] = lastSeq + 1;
        emit BatchAnchored(batchId, merkleRoot, msg.sender, leafCount, firstSeq, lastSeq);
    }

    /// @inheritdoc IResourceAnchor
    function getBatch(uint256 batchId) external view returns (Batch memory) {
        if (batchId == 0 || batchId > _batches.length) revert ResourceAnchorUnknownBatch(batchId);
        return _batches[batchId - 1];
    }

    /// @inheritdoc IResourceAnchor
    function batchIdOfRoot(bytes32 merkleRoot) external view returns (uint256) {
        return _batchIdOfRoot[merkleRoot];
    }

    /// @inheritdoc IResourceAnchor
    function batchCount() external view returns (uint256) {
        return _batches.length;
    }

    /// @inheritdoc IResourceAnchor
    function nextSeq(address authority) external view returns (uint64) {
        return _nextSeq[authority];
    }
}
