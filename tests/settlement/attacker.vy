# pragma version 0.4.3
# A hostile payee for the reentrancy test: re-enters the escrow from its ether hook.

interface Escrow:
    def deposit(): payable
    def withdraw(amount: uint256): nonpayable
    def unstake(amount: uint256): nonpayable

escrow: public(Escrow)
mode: uint256
amount: uint256
reentered: public(bool)
inner_ok: public(bool)


@deploy
def __init__(escrow: address):
    self.escrow = Escrow(escrow)


@external
@payable
def fund():
    extcall self.escrow.deposit(value=msg.value)


@external
def attack(amount: uint256, mode: uint256):
    self.mode = mode
    self.amount = amount
    extcall self.escrow.withdraw(amount)


@external
@payable
def __default__():
    if self.reentered:
        return
    self.reentered = True
    if self.mode == 1:
        extcall self.escrow.withdraw(self.amount)  # a revert here reverts the payout
    else:
        ok: bool = False
        response: Bytes[32] = b""
        ok, response = raw_call(
            self.escrow.address,
            abi_encode(self.amount, method_id=method_id("withdraw(uint256)")),
            max_outsize=32,
            revert_on_failure=False,
        )
        self.inner_ok = ok
