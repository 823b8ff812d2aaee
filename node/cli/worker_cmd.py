"""`c0 worker run` (one job locally, no network) and `c0 verify` (check a result folder)."""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

from node.cli import emit
from protocol.errors import C0Error, UserError
from protocol.jobs import InputRef, JobTemplate

__all__ = ["register"]

REVEAL_NAME = "result.reveal.cose"


def _load_template(path: str) -> JobTemplate:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no job spec at {path}") from None
    except ValueError as exc:
        raise UserError(f"{path} is not JSON: {exc}") from None
    return JobTemplate.from_json(obj)


def _parse_inputs(items: list[str] | None) -> dict[str, Path]:
    inputs: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--input takes NAME=PATH, got {item!r}")
        if name in inputs:
            raise UserError(f"--input {name} given twice")
        file = Path(path)
        if not file.is_file():
            raise UserError(f"--input {name}: no file at {path}")
        inputs[name] = file
    return inputs


def _hash_input(path: Path) -> InputRef:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return InputRef(digest.digest(), size)


def _worker_identity(home_arg: str | None) -> tuple[Any, bool]:
    """The node's identity if a home with keys exists, else a throwaway one."""
    from node.home import home_dir, load_identity
    from protocol.identity import Identity

    try:
        return load_identity(home_dir(home_arg)), True
    except C0Error:
        if home_arg:
            raise
        return Identity.generate(), False


def _sign_reveal(identity: Any, manifest: dict[str, Any], folder: Path) -> Path:
    """Write the manifest as a signed ResultReveal envelope next to result.json."""
    from protocol import codec
    from protocol.envelope import seal
    from protocol.jobs import job_id_from_text
    from protocol.messages import ResultReveal

    reveal = ResultReveal(
        job_id=job_id_from_text(manifest["job_id"]),
        attempt=int(manifest["attempt"]),
        manifest=manifest,
        result_hash=hashlib.sha256(codec.encode(manifest)).digest(),
        salt=secrets.token_bytes(32),
    )
    path = folder / REVEAL_NAME
    path.write_bytes(seal(identity, reveal, now=int(time.time() * 1000)))
    return path


def _run(args: argparse.Namespace) -> int:
    from node.executors import ExecutionRequest, get_executor

    template = _load_template(args.job)
    files = _parse_inputs(args.input)
    refs = {name: _hash_input(path) for name, path in files.items()}
    identity, from_home = _worker_identity(args.home)
    spec = template.bind(refs, client=identity.did, nonce=secrets.token_bytes(16))
    if args.timeout is not None and args.timeout <= 0:
        raise UserError("--timeout must be positive")
    inputs = {name: files.get(name) or Path("/nonexistent") for name in spec.inputs}
    request = ExecutionRequest(spec, inputs, Path(args.output), timeout_s=args.timeout)
    executor = get_executor(spec.job_class)
    result = executor.run(request)
    manifest = result.manifest
    if from_home and result.ok:
        _sign_reveal(identity, manifest, Path(args.output))
    if args.json:
        emit(manifest, as_json=True)
    else:
        error = manifest["error"]
        lines = [
            f"job:       {manifest['job_id']} ({spec.job_class})",
            f"status:    {'ok' if error is None else error['code'] + ': ' + error['message']}",
            f"result:    {result.path}",
        ]
        lines += [f"artifact:  {a['name']}  {a['size']} B  {a['sha256'][:16]}…"
                  for a in manifest["artifacts"]]  # fmt: skip
        if manifest.get("output"):
            lines.append(f"output:    {manifest['output']['text']!r}")
        metrics = ", ".join(f"{k}={v}" for k, v in sorted(manifest["metrics"].items()))
        lines.append(f"metrics:   {metrics}")
        emit(manifest, as_json=False, text="\n".join(lines))
    return result.exit_code


def _verify(args: argparse.Namespace) -> int:
    from node.verification import verify_result

    template = _load_template(args.job)
    inputs = _parse_inputs(args.input)
    folder = Path(args.result)
    if not folder.is_dir():
        raise UserError(f"no result folder at {folder}")
    compare = Path(args.compare) if args.compare else None
    if compare is not None and not compare.is_dir():
        raise UserError(f"no result folder at {compare}")
    report = verify_result(template, folder, inputs=inputs, compare=compare)
    text = (
        "\n".join(f"{c.status:4}  {c.name:18} {c.detail}" for c in report.checks)
        + f"\n{'PASSED' if report.passed else 'FAILED'}"
    )
    emit(report.to_json(), as_json=args.json, text=text)
    return 0 if report.passed else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser("worker", help="run jobs on this machine")
    wsub = worker.add_subparsers(dest="worker_command", metavar="ACTION", required=True)
    run = wsub.add_parser(
        "run",
        help="run one job locally (no network)",
        description="Run one job in a sandboxed child process; write DIR/result.json and "
        "the artifacts. Exits 0 on success, else the failure's code (spec/executors.md).",
    )
    run.add_argument("--job", required=True, metavar="SPEC.json", help="job spec (JSON)")
    run.add_argument("--input", action="append", metavar="NAME=PATH",
                     help="bind a file to the spec's named input (hashed here)")  # fmt: skip
    run.add_argument("--output", required=True, metavar="DIR", help="an empty or new folder")
    run.add_argument("--timeout", type=float, metavar="S", help="wall-clock limit, seconds")
    run.add_argument("--home", help="node home whose keys sign the result (default: $C0_HOME, "
                     "then ~/.c0; without keys, a throwaway identity)")  # fmt: skip
    run.add_argument("--json", action="store_true", help="print the manifest as JSON")
    run.set_defaults(func=_run)

    verify = sub.add_parser(
        "verify",
        help="run the verification checks on a result folder",
        description="Exit 0 if every check passed, 1 if any failed.",
    )
    verify.add_argument("--job", required=True, metavar="SPEC.json")
    verify.add_argument("--result", required=True, metavar="DIR")
    verify.add_argument(
        "--input",
        action="append",
        metavar="NAME=PATH",
        help="the job's input (source or model) for the checks that need it",
    )
    verify.add_argument("--compare", metavar="DIR2",
                        help="another worker's result for the same job")  # fmt: skip
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_verify)
