"""The batch Merkle tree the escrow commits to (protocol.settlement), without a chain."""

from __future__ import annotations

import hashlib

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
