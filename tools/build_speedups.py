"""Compile protocol/cbor_impl.py with mypyc into the virtual environment.

`python tools/build_speedups.py` (run by `make`) copies the file under the module name
`c0_cbor_compiled`, appends `SOURCE_SHA256` (the digest of the file it was built from),
compiles it with mypyc in a scratch folder and installs the extension modules into this
interpreter's site-packages. `protocol.codec` then uses it. Nothing in the work tree is
touched, so an edited cbor_impl.py can never be shadowed by an old build in place;
`--check` exits 1 if the installed build is missing or stale.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "protocol" / "cbor_impl.py"
MODULE = "c0_cbor_compiled"


def source_digest() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def installed_digest() -> str | None:
    # protocol first: the compiled module imports protocol.cbor_types and protocol.errors
    code = f"import protocol.codec, {MODULE} as m; print(m.SOURCE_SHA256)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    return proc.stdout.strip() if proc.returncode == 0 else None


def build() -> Path:
    site = Path(sysconfig.get_paths()["platlib"])
    for old in site.glob(f"{MODULE}*"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="c0-speedups-") as tmp:
        work = Path(tmp)
        text = SOURCE.read_text()
        text += f'\n\nSOURCE_SHA256 = "{source_digest()}"\n'
        (work / f"{MODULE}.py").write_text(text)
        mypyc = Path(sys.executable).with_name("mypyc")
        subprocess.run(
            [str(mypyc), f"{MODULE}.py"],
            cwd=work,
            check=True,
            stdout=subprocess.DEVNULL,
            env={
                "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                "MYPYPATH": str(ROOT),
                "PYTHONPATH": str(ROOT),
                "HOME": tmp,
            },
        )
        built = sorted(p for p in work.glob("*.so"))
        if not built:
            raise SystemExit("mypyc produced no extension module")
        for path in built:
            shutil.copy2(path, site / path.name)
    return site


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if missing or stale")
    args = parser.parse_args()
    want = source_digest()
    if args.check:
        have = installed_digest()
        if have != want:
            print(f"{MODULE}: {'missing' if have is None else 'stale'}; run make", file=sys.stderr)
            return 1
        return 0
    site = build()
    have = installed_digest()
    if have != want:
        print(f"{MODULE}: built but not importable from {site}", file=sys.stderr)
        return 1
    print(f"{MODULE}: compiled protocol/cbor_impl.py into {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
