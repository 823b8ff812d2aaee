"""Fixtures: the same settlement suite runs on the embedded chain and on a real anvil process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from eth_account.signers.local import LocalAccount

from node.chain import Anvil, Chain, EscrowClient, embedded_chain, rpc_chain
from node.chain.anvil import TOOLS_ANVIL
from protocol import settlement as S

ETH = 10**18


def anvil_binary_or_fail() -> None:
    if os.environ.get("C0_ANVIL") or TOOLS_ANVIL.is_file():
        return
    pytest.fail(
        "anvil is missing: run `make tools` (CI gets it through `make test`) or set C0_ANVIL"
    )


@pytest.fixture(scope="session")
def anvil_url() -> Iterator[str]:
    anvil_binary_or_fail()
    with Anvil() as node:
        assert node.url is not None
        yield node.url


@pytest.fixture(scope="session")
def _embedded() -> Chain:
    return embedded_chain()


@pytest.fixture(params=["embedded", pytest.param("anvil", marks=pytest.mark.anvil)])
def chain(request: pytest.FixtureRequest) -> Chain:
    if request.param == "embedded":
        c: Chain = request.getfixturevalue("_embedded")
        return c
    return rpc_chain(request.getfixturevalue("anvil_url"))


@dataclass
class Parties:
    """A fresh escrow; a client, three workers, a verifier, an arbiter and an outsider."""

    chain: Chain
    escrow: str
    client: EscrowClient
    workers: list[EscrowClient]
    verifier: EscrowClient
    arbiter: EscrowClient
    outsider: EscrowClient

    def terms(
        self,
        job_id: bytes,
        *,
        workers: int = 1,
        payout: int = ETH // 100,
        lock: int = ETH // 1000,
        quorum: int = 1,
        fee: int = ETH // 1000,
        commit_in: int = 600,
        deadline_in: int = 1200,
    ) -> S.EscrowTerms:
        now = self.chain.now()
        common = S.Common(
            client=self.client.account.address,
            arbiter=self.arbiter.account.address,
            commit_deadline=now + commit_in,
            deadline=now + deadline_in,
            quorum=quorum,
            verifier=self.verifier.account.address,
            verifier_fee=fee,
        )
        assignments = tuple(
            S.Assignment(w.account.address, payout + i, lock)
            for i, w in enumerate(self.workers[:workers])
        )
        terms = S.EscrowTerms(job_id=job_id, common=common, assignments=assignments)
        return self.consented(terms)

    def consented(self, terms: S.EscrowTerms) -> S.EscrowTerms:
        """`terms` with every assigned worker's signed consent (what `open` needs for a
        stake lock)."""
        by_address = {w.account.address.lower(): w for w in self.workers}
        sigs = tuple(
            by_address[a.worker.lower()].sign_consent(terms, i) if a.stake_lock else b""
            for i, a in enumerate(terms.assignments)
        )
        return replace(terms, consents=sigs)

    def held(self) -> int:
        return self.client.contract_balance()


def make_parties(chain: Chain) -> Parties:
    accounts: list[LocalAccount] = [chain.dev_account(i) for i in range(7)]
    deployer, _ = EscrowClient.deploy(chain, accounts[0])
    clients = [EscrowClient(chain, deployer.address, a) for a in accounts]
    return Parties(
        chain=chain,
        escrow=deployer.address,
        client=clients[0],
        workers=clients[1:4],
        verifier=clients[4],
        arbiter=clients[5],
        outsider=clients[6],
    )


@pytest.fixture
def parties(chain: Chain) -> Parties:
    p = make_parties(chain)
    p.client.deposit(ETH)
    for w in p.workers:
        w.stake(ETH // 10)
    return p
