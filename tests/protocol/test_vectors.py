"""Writes spec/vectors/*.json and checks each vector using only what the files say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol.envelope import ReplayGuard, open_envelope
from protocol.errors import IllegalTransition, PeerProtocolError
from protocol.identity import Identity, verify_binding
from protocol.state import JobMachine
from tests.protocol import vectors

VECTOR_DIR = Path(__file__).resolve().parents[2] / "spec" / "vectors"
REQUIRED_REASONS = {
    "bad_signature",
    "tampered_payload",
    "wrong_signer",
    "wrong_algorithm",
    "truncated",
    "non_canonical",
}


def _write(name: str, data: Any) -> list[Any]:
    """The committed file, which must equal what the generator makes now (the test never
    rewrites it: `python -m tests.protocol.vectors` does)."""
    path = VECTOR_DIR / name
    assert path.is_file(), f"{path} is missing: run python -m tests.protocol.vectors"
    assert path.read_text() == vectors.render(data), (
        f"{path} differs from the generator: run python -m tests.protocol.vectors and commit"
    )
    loaded: list[Any] = json.loads(path.read_text())
    return loaded


def test_generation_is_deterministic() -> None:
    assert vectors.envelope_vectors() == vectors.envelope_vectors()
    assert vectors.identity_vectors() == vectors.identity_vectors()


def test_identity_vectors() -> None:
    loaded = _write("identities.json", vectors.identity_vectors())
    assert len(loaded) >= 3
    for vec in loaded:
        ident = Identity.from_seed(bytes.fromhex(vec["seed_hex"]))
        assert ident.public.hex() == vec["ed25519_public_hex"]
        assert ident.did == vec["did"]
        assert ident.peer_id == vec["peer_id"]
        assert ident.eth_address == vec["eth_address"]
        verify_binding(ident.eth_binding())


def test_envelope_vectors() -> None:
    loaded = _write("envelopes.json", vectors.envelope_vectors())
    assert len(loaded) >= 12
    assert {v["reason"] for v in loaded} >= REQUIRED_REASONS
    for vec in loaded:
        guard = ReplayGuard()
        kwargs = {"max_size": vec["max_size"]} if "max_size" in vec else {}
        for earlier in vec.get("seen", []):
            open_envelope(bytes.fromhex(earlier), now=vec["now"], replay_guard=guard)
        data = bytes.fromhex(vec["cose_sign1_hex"])
        if vec["valid"]:
            signed = open_envelope(data, now=vec["now"], replay_guard=guard, **kwargs)
            assert signed.sender == vec["signer"], vec["description"]
        else:
            with pytest.raises(PeerProtocolError) as info:
                open_envelope(data, now=vec["now"], replay_guard=guard, **kwargs)
            assert info.value.reason == vec["error"], vec["description"]


def test_state_machine_vectors() -> None:
    loaded = _write("state-machine.json", vectors.state_machine_vectors())
    for scenario in loaded:
        machine = JobMachine(max_attempts=scenario["max_attempts"])
        for step in scenario["steps"]:
            assert str(machine.state) == step["state"], scenario["description"]
            assert machine.attempt == step["attempt"]
            if step["error"] is None:
                assert str(machine.handle(step["event"])) == step["next"]
            else:
                with pytest.raises(IllegalTransition):
                    machine.handle(step["event"])
