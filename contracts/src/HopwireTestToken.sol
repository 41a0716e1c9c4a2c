// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title The testnet's token
/// @notice An ERC-20 whose deployer mints: what `hopwire testnet --ledger evm`
/// funds its client with. Never deploy it where it could be mistaken for money.
contract HopwireTestToken is ERC20 {
    address public immutable minter;

    error NotMinter();

    constructor() ERC20("Hopwire Test Token", "HWT") {
        minter = msg.sender;
    }

    function mint(address to, uint256 amount) external {
        if (msg.sender != minter) revert NotMinter();
        _mint(to, amount);
    }
}
