"""Deterministic CBOR (RFC 8949 §4.2.1) encoding and a strict, bounded decoder.

The decoder accepts only the deterministic subset: shortest-form heads, definite lengths,
map keys unique and sorted by their encoded bytes, floats in their shortest exact form.
Anything else raises PeerProtocolError before more work is done; it never raises another
exception type, whatever the input bytes (a fuzz test holds it to that).

Two implementations of one source, `protocol/cbor_impl.py`: the plain Python module, and
the same file compiled with mypyc (`tools/build_speedups.py`, run by `make`), which
decodes about twice as fast. The compiled one is used when it is installed;
`C0_PURE_PYTHON=1` forces the plain one. `IMPLEMENTATION` says
which is in use. The test suite runs both and checks that they agree.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from protocol import cbor_impl
from protocol.cbor_types import DEFAULT_LIMITS, CBORTag, DecodeLimits, EncodedMap

__all__ = [
    "COMPILED_MODULE",
    "DEFAULT_LIMITS",
    "IMPLEMENTATION",
    "CBORTag",
    "DecodeLimits",
    "EncodedMap",
    "compiled",
    "decode",
    "encode",
]

COMPILED_MODULE = "c0_cbor_compiled"  # the mypyc build of cbor_impl.py, in site-packages


def compiled() -> Any | None:
    """The compiled implementation if it is installed, else None. It records the SHA-256
    of the cbor_impl.py it was built from (`SOURCE_SHA256`); `make` rebuilds it whenever
    that file changes, and a test fails if the installed one is stale."""
    try:
        return importlib.import_module(COMPILED_MODULE)
    except ImportError:
        return None


_compiled = None if os.environ.get("C0_PURE_PYTHON") == "1" else compiled()
_impl: Any = cbor_impl if _compiled is None else _compiled
IMPLEMENTATION = "python" if _compiled is None else "mypyc"

encode: Callable[[Any], bytes] = _impl.encode
decode: Callable[..., Any] = _impl.decode
