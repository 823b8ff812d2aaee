"""protocol/ does no I/O: it never imports networking, chain, media, inference or DB code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"
FORBIDDEN = {
    "trio",
    "libp2p",
    "web3",
    "av",
    "llama_cpp",
    "sqlite3",
    "socket",
    "asyncio",
    "subprocess",
    "requests",
    "httpx",
    "urllib",
}


def test_no_forbidden_import_statements() -> None:
    offenders = []
    for path in sorted(PROTOCOL.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.relative_to(PROTOCOL)}:{node.lineno} {name}")
    assert offenders == []


def test_importing_protocol_loads_no_forbidden_module() -> None:
    """Catches indirect imports too (a dependency that pulls in sockets or trio)."""
    code = (
        "import sys, json, pkgutil, importlib, protocol\n"
        "for m in pkgutil.walk_packages(protocol.__path__, 'protocol.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROTOCOL.parent,
    )
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert loaded & {"trio", "libp2p", "web3", "av", "llama_cpp", "sqlite3"} == set()
