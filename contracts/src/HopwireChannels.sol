// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @title Hopwire payment channels
/// @notice Unidirectional channels from a client (payer) to a node (payee),
/// paid with cumulative receipts. One deployment holds one token: an ERC-20,
/// or the chain's native coin when `token` is the zero address.
///
/// Amounts are in Hopwire units, `unit` base units of the token each, so a
/// receipt's amount fits 64 bits (with 18 decimals and a unit of 10^12, the
/// largest amount is 18 million tokens).
///
/// A receipt is EIP-712 typed data signed by the channel's `signer`, a key
/// the payer names at open (a fresh one per channel keeps receipts of one
/// payer's channels from sharing a key). Settling pays the payee what the
/// newest receipt adds to what was settled, never more than the deposit;
/// anyone may send it, so a node can be settled by someone who holds gas.
/// A close waits out `challengePeriod` seconds in which the payee can still
/// settle; then finalizing returns the rest of the deposit to the payer.
contract HopwireChannels is EIP712, ReentrancyGuard {
    using SafeERC20 for IERC20;

    struct Channel {
        address payer;
        uint64 closeAt;
        address payee;
        bool finalized;
        address signer;
        uint64 deposit;
        uint64 settled;
    }

    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 channel,bytes16 session,uint64 seq,uint64 cumulativeBytes,uint64 cumulativeAmount)"
    );

    /// The ERC-20 paid in, or zero for the native coin.
    IERC20 public immutable token;
    /// Base units of the token per Hopwire unit.
    uint256 public immutable unit;
    /// Seconds a payee has to settle once a close starts.
    uint64 public immutable challengePeriod;

    mapping(bytes32 => Channel) private channels;

    event Opened(
        bytes32 indexed id, address indexed payer, address indexed payee, address signer, uint64 deposit
    );
    event ToppedUp(bytes32 indexed id, uint64 amount, uint64 deposit);
    event Settled(bytes32 indexed id, uint64 paid, uint64 settled);
    event CloseStarted(bytes32 indexed id, uint64 closeAt);
    event Finalized(bytes32 indexed id, uint64 refund);

    error ChannelExists(bytes32 id);
    error NoChannel(bytes32 id);
    error ChannelClosed(bytes32 id);
    error NotPayer(bytes32 id);
    error ZeroAddress();
    error ZeroAmount();
    error WrongValue(uint256 expected, uint256 sent);
    error BadSignature(bytes32 id);
    error NothingToSettle(bytes32 id, uint64 amount, uint64 settled);
    error ChallengePeriod(bytes32 id, uint64 closeAt);
    error NotClosing(bytes32 id);
    error Overflow();
    error NativeTransfer();

    constructor(IERC20 token_, uint256 unit_, uint64 challengePeriod_) EIP712("Hopwire", "1") {
        if (unit_ == 0) revert ZeroAmount();
        token = token_;
        unit = unit_;
        challengePeriod = challengePeriod_;
    }

    /// Opens channel `id` from the sender to `payee` with `deposit` units;
    /// receipts must be signed by `signer`.
    function open(bytes32 id, address payee, address signer, uint64 deposit) external payable nonReentrant {
        if (channels[id].payer != address(0)) revert ChannelExists(id);
        if (payee == address(0) || signer == address(0)) revert ZeroAddress();
        if (deposit == 0) revert ZeroAmount();
        channels[id] = Channel({
            payer: msg.sender,
            closeAt: 0,
            payee: payee,
            finalized: false,
            signer: signer,
            deposit: deposit,
            settled: 0
        });
        _take(deposit);
        emit Opened(id, msg.sender, payee, signer, deposit);
    }

    /// Adds `amount` units to an open channel's deposit (its payer only;
    /// not once it is closing).
    function topUp(bytes32 id, uint64 amount) external payable nonReentrant {
        Channel storage c = _open(id);
        if (c.payer != msg.sender) revert NotPayer(id);
        if (c.closeAt != 0) revert ChannelClosed(id);
        if (amount == 0) revert ZeroAmount();
        uint256 deposit = uint256(c.deposit) + amount;
        if (deposit > type(uint64).max) revert Overflow();
        c.deposit = uint64(deposit);
        _take(amount);
        emit ToppedUp(id, amount, c.deposit);
    }

    /// Pays the payee what the receipt adds to what was settled, capped at
    /// the deposit. Anyone may call it; an older or equal receipt reverts.
    function settle(
        bytes32 id,
        bytes16 session,
        uint64 seq,
        uint64 cumulativeBytes,
        uint64 cumulativeAmount,
        bytes calldata signature
    ) external nonReentrant returns (uint64 paid) {
        Channel storage c = _open(id);
        if (c.closeAt != 0 && block.timestamp >= c.closeAt) revert ChannelClosed(id);
        bytes32 digest = receiptDigest(id, session, seq, cumulativeBytes, cumulativeAmount);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError || signer != c.signer) revert BadSignature(id);
        uint64 amount = cumulativeAmount < c.deposit ? cumulativeAmount : c.deposit;
        if (amount <= c.settled) revert NothingToSettle(id, amount, c.settled);
        paid = amount - c.settled;
        c.settled = amount;
        _pay(c.payee, paid);
        emit Settled(id, paid, amount);
    }

    /// Starts closing (the payer only): the payee has `challengePeriod`
    /// seconds to settle. Starting again changes nothing.
    function startClose(bytes32 id) external {
        Channel storage c = _open(id);
        if (c.payer != msg.sender) revert NotPayer(id);
        if (c.closeAt == 0) {
            c.closeAt = uint64(block.timestamp) + challengePeriod;
            emit CloseStarted(id, c.closeAt);
        }
    }

    /// Ends a closing channel after its challenge period and returns the
    /// rest of the deposit to the payer. Anyone may call it.
    function finalize(bytes32 id) external nonReentrant returns (uint64 refund) {
        Channel storage c = _open(id);
        if (c.closeAt == 0) revert NotClosing(id);
        if (block.timestamp < c.closeAt) revert ChallengePeriod(id, c.closeAt);
        c.finalized = true;
        refund = c.deposit - c.settled;
        _pay(c.payer, refund);
        emit Finalized(id, refund);
    }

    function channel(bytes32 id) external view returns (Channel memory) {
        return channels[id];
    }

    /// The EIP-712 digest a receipt's signer signs.
    function receiptDigest(
        bytes32 id,
        bytes16 session,
        uint64 seq,
        uint64 cumulativeBytes,
        uint64 cumulativeAmount
    ) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(RECEIPT_TYPEHASH, id, session, seq, cumulativeBytes, cumulativeAmount))
        );
    }

    /// A channel that exists and is not finalized.
    function _open(bytes32 id) private view returns (Channel storage c) {
        c = channels[id];
        if (c.payer == address(0)) revert NoChannel(id);
        if (c.finalized) revert ChannelClosed(id);
    }

    function _take(uint64 amount) private {
        uint256 value = uint256(amount) * unit;
        if (address(token) == address(0)) {
            if (msg.value != value) revert WrongValue(value, msg.value);
        } else {
            if (msg.value != 0) revert WrongValue(0, msg.value);
            token.safeTransferFrom(msg.sender, address(this), value);
        }
    }

    function _pay(address to, uint64 amount) private {
        if (amount == 0) return;
        uint256 value = uint256(amount) * unit;
        if (address(token) == address(0)) {
            (bool ok,) = to.call{value: value}("");
            if (!ok) revert NativeTransfer();
        } else {
            token.safeTransfer(to, value);
        }
    }
}
