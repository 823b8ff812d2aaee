"""The c0 protocol core: identities, canonical CBOR, signed envelopes, messages, job
classes and the job state machine. No I/O happens in this package."""

from protocol.codec import CBORTag, DecodeLimits, decode, encode
from protocol.envelope import Header, ReplayGuard, SignedMessage, envelope_hash, open_envelope, seal
from protocol.errors import (
    C0Error,
    IllegalTransition,
    InvalidJobSpec,
    InvalidMessage,
    LocalProtocolError,
    PeerProtocolError,
    UserError,
)
from protocol.identity import EthBinding, Identity, did_from_public, peer_id_from_public
from protocol.jobs import JOB_CLASSES, InputRef, JobSpec, JobTemplate, validate_params
from protocol.state import Event, JobMachine, State

__all__ = [
    "JOB_CLASSES",
    "C0Error",
    "CBORTag",
    "DecodeLimits",
    "EthBinding",
    "Event",
    "Header",
    "Identity",
    "IllegalTransition",
    "InputRef",
    "InvalidJobSpec",
    "InvalidMessage",
    "JobMachine",
    "JobSpec",
    "JobTemplate",
    "LocalProtocolError",
    "PeerProtocolError",
    "ReplayGuard",
    "SignedMessage",
    "State",
    "UserError",
    "decode",
    "did_from_public",
    "encode",
    "envelope_hash",
    "open_envelope",
    "peer_id_from_public",
    "seal",
    "validate_params",
]
