"""The batch Merkle tree the escrow commits to (protocol.settlement), without a chain."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import settlement as S


def leaves(n: int, tag: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(tag + i.to_bytes(2, "big")).digest() for i in range(n)]


@given(st.integers(min_value=1, max_value=S.MAX_BATCH), st.binary(max_size=4))
def test_every_proof_leads_to_the_root(size: int, tag: bytes) -> None:
    ls = leaves(size, tag)
    root = S.merkle_root(ls)
    for i, leaf in enumerate(ls):
        ref = S.EscrowRef(7, size, i, S.merkle_proof(ls, i))
        assert len(ref.proof) == (size - 1).bit_length()  # ceil(log2(size))
        assert S.root_from_ref(leaf, ref) == root
        assert ref.seq == 7 + i


@given(st.integers(min_value=1, max_value=S.MAX_BATCH), st.binary(max_size=4))
def test_all_proofs_at_once_equal_each_proof_alone(size: int, tag: bytes) -> None:
    """`merkle_proofs` (the tree built once, as `locate_batch` uses it) gives each leaf
    the very proof `merkle_proof` computes for it alone."""
    ls = leaves(size, tag)
    assert S.merkle_proofs(ls) == [S.merkle_proof(ls, i) for i in range(size)]


@given(st.integers(min_value=2, max_value=S.MAX_BATCH), st.data())
def test_a_leaf_is_found_only_at_its_own_place(size: int, data: st.DataObject) -> None:
    ls = leaves(size)
    root = S.merkle_root(ls)
    i = data.draw(st.integers(0, size - 1))
    j = data.draw(st.integers(0, size - 1).filter(lambda j: j != i))
    proof = S.merkle_proof(ls, i)
    assert S.root_from_ref(ls[j], S.EscrowRef(0, size, i, proof)) != root  # another leaf
    assert S.root_from_ref(ls[i], S.EscrowRef(0, size, j, proof)) != root  # another place
    flipped = bytes([proof[0][0] ^ 1]) + proof[0][1:]
    bad = S.EscrowRef(0, size, i, (flipped, *proof[1:]))
    assert S.root_from_ref(ls[i], bad) != root
    # malformed refs are refused outright
    assert S.root_from_ref(ls[i], S.EscrowRef(0, size, size, proof)) is None
    assert S.root_from_ref(ls[i], S.EscrowRef(0, size, i, proof[:-1])) is None


def test_locate_batch_numbers_jobs_in_ascending_id_order() -> None:
    common = S.Common(
        client="0x" + "11" * 20, arbiter="0x" + "22" * 20, commit_deadline=10, deadline=20
    )
    batch = [
        S.EscrowTerms(
            hashlib.sha256(bytes([i])).digest(), common, (S.Assignment("0x" + "33" * 20, i),)
        )
        for i in range(5)
    ]
    located = S.locate_batch(batch, 100)
    assert [t.job_id for t in located] == sorted(t.job_id for t in batch)
    assert [t.located().seq for t in located] == list(range(100, 105))
    root = S.merkle_root([S.terms_hash(t) for t in located])
    assert all(S.root_from_ref(S.terms_hash(t), t.located()) == root for t in located)
    # the ref is not part of the terms: equal terms compare equal, located or not
    assert located[0] == next(t for t in batch if t.job_id == located[0].job_id)


_addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
_uints = st.integers(min_value=0, max_value=2**256 - 1)


@given(
    st.binary(min_size=32, max_size=32),
    st.builds(S.Common, _addresses, _addresses, _uints, _uints, _uints, _addresses, _uints),
    st.lists(st.builds(S.Assignment, _addresses, _uints, _uints), max_size=5),
)
def test_terms_are_hashed_as_eth_abi_encodes_them(
    job_id: bytes, common: S.Common, assignments: list[S.Assignment]
) -> None:
    """The word-by-word encoding equals eth_abi's (the contract hashes abi.encode)."""
    from eth_abi.abi import encode
    from eth_utils.crypto import keccak

    terms = S.EscrowTerms(job_id, common, tuple(assignments))
    expected_common = keccak(encode([S.COMMON_ABI], [common.as_abi()]))
    assert S.common_hash(common) == expected_common
    expected = encode(
        ["bytes32", "bytes32", S.ASSIGNMENT_ABI + "[]"],
        [job_id, expected_common, [a.as_abi() for a in assignments]],
    )
    assert S.terms_encoding(terms) == expected
    assert S.terms_hash(terms) == keccak(expected)


def test_terms_that_cannot_be_encoded_are_refused() -> None:
    good = S.Common("0x" + "11" * 20, "0x" + "22" * 20, 10, 20)
    for bad in (
        S.Common("0x1234", good.arbiter, 10, 20),
        S.Common("0x" + "zz" * 20, good.arbiter, 10, 20),
        S.Common(good.client, good.arbiter, -1, 20),
        S.Common(good.client, good.arbiter, 10, 2**256),
    ):
        with pytest.raises(ValueError):
            S.terms_hash(S.EscrowTerms(bytes(32), bad, ()))
    with pytest.raises(ValueError):
        S.terms_hash(S.EscrowTerms(bytes(31), good, ()))


@given(
    st.binary(min_size=32, max_size=32),
    st.builds(S.Common, _addresses, _addresses, _uints, _uints, _uints, _addresses, _uints),
    st.lists(st.builds(S.Assignment, _addresses, _uints, _uints), max_size=5),
    st.tuples(_uints, _uints, _uints),
    st.lists(st.binary(min_size=32, max_size=32), max_size=8),
)
def test_single_job_arguments_are_encoded_as_eth_abi_encodes_them(
    job_id: bytes,
    common: S.Common,
    assignments: list[S.Assignment],
    place: tuple[int, int, int],
    proof: list[bytes],
) -> None:
    from eth_abi.abi import encode

    ref = S.EscrowRef(*place, tuple(proof))
    terms = S.EscrowTerms(job_id, common, tuple(assignments), ref)
    expected = encode(
        [S.COMMON_ABI, "(bytes32,uint256," + S.ASSIGNMENT_ABI + "[])", S.REF_ABI],
        [common.as_abi(), S.job_abi(terms), ref.as_abi()],
    )
    assert S.job_args_encoding(terms) == expected


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=20, max_size=20),
       st.binary(min_size=32, max_size=32), st.booleans())  # fmt: skip
def test_commit_hash_is_keccak_of_what_eth_abi_encodes(
    result: bytes, address: bytes, salt: bytes, lower: bool
) -> None:
    """The commitment is encoded word by word; it equals keccak(abi.encode(...)) for any
    spelling of the address, and refuses what is not one."""
    from eth_abi.abi import encode
    from eth_utils.address import to_checksum_address
    from eth_utils.crypto import keccak

    worker = "0x" + address.hex() if lower else to_checksum_address(address)
    expected = keccak(encode(["bytes32", "address", "bytes32"], [result, worker, salt]))
    assert S.commit_hash(result, worker, salt) == expected
    for bad in ("0x" + address.hex()[:-2], "not an address", 7):
        with pytest.raises(S.SettlementError):
            S.commit_hash(result, bad, salt)  # type: ignore[arg-type]
    with pytest.raises(S.SettlementError):
        S.commit_hash(result[:31], worker, salt)
