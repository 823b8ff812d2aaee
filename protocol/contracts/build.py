"""Compile escrow.vy into the checked-in artifact escrow.json: `python -m protocol.contracts.build`.

A test compiles again and compares, so the artifact and the source never drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "escrow.vy"
ARTIFACT = HERE / "escrow.json"
EVM_VERSION = "prague"


def compile_source(path: Path = SOURCE) -> dict[str, Any]:
    """ABI, creation bytecode and runtime bytecode, plus what produced them."""
    import vyper  # type: ignore[import-untyped]  # lazily: only building needs the compiler
    from vyper.compiler.settings import Settings  # type: ignore[import-untyped]

    out = vyper.compile_code(
        path.read_text(),
        output_formats=["abi", "bytecode", "bytecode_runtime"],
        settings=Settings(evm_version=EVM_VERSION, experimental_codegen=True),
    )
    return {
        "contract": path.stem,
        "compiler": f"vyper {vyper.__version__}",
        "evm_version": EVM_VERSION,
        "abi": out["abi"],
        "bytecode": out["bytecode"],
        "bytecode_runtime": out["bytecode_runtime"],
    }


def render(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


def main() -> int:
    ARTIFACT.write_text(render(compile_source()))
    print(f"wrote {ARTIFACT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
