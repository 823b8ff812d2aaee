"""Run the verification checks of protocol.verify on a result folder (the I/O half).

Media files are demuxed and decoded in a check child under the job's own limits
(node/executors/checks.py), never in this process: a result is untrusted input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.executors.checks import CheckLimits, Media, probe_files, psnr
from node.executors.errors import ExecutorError
from node.executors.manifest import MANIFEST_NAME, hash_file, read_manifest
from protocol.jobs import JobTemplate
from protocol.verify import (
    Check,
    PlaylistError,
    Report,
    SamplingPolicy,
    check_artifact_hashes,
    check_generation,
    check_manifest_schema,
    check_noop,
    check_probe,
    check_psnr,
    check_segments,
    check_teacher_forced,
    check_thumbnail,
    check_transcode,
    compare_exact,
    fail,
    parse_playlist,
    passed,
    skipped,
)
from protocol.verify.manifest import ARTIFACT_NAME

__all__ = ["verify_result"]

_MAX_JSON = 16 << 20


def _observed(folder: Path, manifest: Mapping[str, Any]) -> dict[str, tuple[str, int] | None]:
    seen: dict[str, tuple[str, int] | None] = {}
    for item in manifest["artifacts"]:
        name = str(item["name"])
        path = folder / name
        ok = ARTIFACT_NAME.match(name) and path.is_file() and not path.is_symlink()
        seen[name] = hash_file(path) if ok else None
    return seen


def _read_json(path: Path) -> Any:
    if path.stat().st_size > _MAX_JSON:
        raise ValueError(f"{path.name} is too large")
    return json.loads(path.read_text(encoding="utf-8"))


def _probe_all(
    items: list[tuple[Media, str]], limits: CheckLimits, check: str = "probe"
) -> list[dict[str, Any]] | Check:
    """Probe `items` (file, what) in one check child: every one's facts, or the failed
    `check` of the first that is not readable media, or of the child failing as a whole
    (its limits, a crash)."""
    try:
        results = probe_files(items, limits)
    except ExecutorError as exc:
        return fail(check, exc.message)
    probes: list[dict[str, Any]] = []
    for result, (_, what) in zip(results, items, strict=False):
        if not isinstance(result, dict):
            return fail(check, f"{what}: {result.message}")
        probes.append(result)
    if len(probes) < len(items):
        return fail(check, "the check child reported fewer probes than it was given")
    return probes


def verify_result(
    template: JobTemplate,
    folder: Path,
    *,
    inputs: Mapping[str, Path] | None = None,
    compare: Path | None = None,
) -> Report:
    """Every check that applies to this job class. `inputs` (e.g. the source or the
    model) enables the checks that need them; `compare` is a second worker's result
    folder for the same job (exact match on equal runtimes, PSNR otherwise)."""
    inputs = dict(inputs or {})
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as exc:
        return Report.of([fail("manifest", f"cannot read {MANIFEST_NAME}: {exc}")])
    checks = check_manifest_schema(manifest, job_class=template.job_class)
    if checks[-1].status == "fail":
        return Report.of(checks)
    checks.append(_check_spec(template, manifest))
    params = dict(manifest["spec"]["params"])
    artifacts = manifest["artifacts"]
    if artifacts:
        checks.append(check_artifact_hashes(artifacts, _observed(folder, manifest)))
        if checks[-1].status == "fail":
            return Report.of(checks)
    names = [str(a["name"]) for a in artifacts]
    cls = template.job_class
    limits = CheckLimits.for_job(template.limits)
    try:
        if cls == "noop":
            checks.append(check_noop(params, artifacts))
        elif cls == "llm.generate":
            checks += _verify_llm(params, manifest, inputs.get("model"), compare)
        else:
            checks += _verify_media(
                cls, params, folder, names, inputs.get("source"), compare, limits
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        checks.append(fail("result", f"unreadable result: {exc}"))
    return Report.of(checks)


def _check_spec(template: JobTemplate, manifest: Mapping[str, Any]) -> Check:
    from node.executors.manifest import spec_from_json

    try:
        spec = spec_from_json(manifest["spec"])
    except Exception as exc:
        return fail("job", f"the manifest's job spec is invalid: {exc}")
    if spec.job_id_text != manifest["job_id"]:
        return fail("job", "job_id is not the hash of the manifest's job spec")
    if dict(spec.params) != dict(template.params):
        return fail("job", "the result is for other parameters than --job gives")
    for name, ref in template.inputs.items():
        if ref is not None and spec.inputs.get(name) != ref:
            return fail("job", f"input {name!r} differs from the job's")
    return passed("job", f"job {spec.job_id_text} with the requested parameters")


def _verify_media(
    cls: str,
    params: Mapping[str, Any],
    folder: Path,
    names: list[str],
    source_path: Path | None,
    compare: Path | None,
    limits: CheckLimits,
) -> list[Check]:
    source: dict[str, Any] | None = None
    checks: list[Check] = []
    if source_path is not None:
        probed = _probe_all([(source_path, "source")], limits, "source")
        if not isinstance(probed, list):
            return [probed]
        source = probed[0]
    else:
        checks.append(skipped("source", "no --input source given: source-relative checks skipped"))
    if cls == "media.probe":
        return checks + check_probe(_read_json(folder / "probe.json"), source)
    if cls == "media.thumbnail":
        image = [n for n in names if n.startswith("thumbnail.")]
        if len(image) != 1:
            return [*checks, fail("image", "no thumbnail artifact")]
        probes = _probe_all([(folder / image[0], "thumbnail")], limits)
        if not isinstance(probes, list):
            return [*checks, probes]
        return checks + check_thumbnail(params, probes[0], source)
    if cls == "media.segment":
        if "segments.json" not in names:
            return [*checks, fail("listing", "no segments.json")]
        listing = _read_json(folder / "segments.json")
        items: list[tuple[Media, str]] = [
            (folder / name, name) for name in sorted(n for n in names if n != "segments.json")
        ]
        probes = _probe_all(items, limits)
        if not isinstance(probes, list):
            return [*checks, probes]
        return checks + check_segments(params, listing, probes, names, source)
    return checks + _verify_transcode(params, folder, names, source, compare, limits)


def _rendition(folder: Path, names: list[str]) -> tuple[Any, list[list[Path]]]:
    """The parsed playlist and each segment as the parts PyAV opens it from (the init
    section and the segment for fMP4; the check child joins them)."""
    playlist_name = "index.m3u8"
    if playlist_name not in names:
        raise ValueError("no index.m3u8 artifact")
    playlist = parse_playlist((folder / playlist_name).read_text(encoding="utf-8"))
    init = [folder / playlist.init] if playlist.init in names else []
    segments: list[list[Path]] = []
    for uri, _ in playlist.segments:
        if uri not in names:
            break  # the references check reports it
        segments.append([*init, folder / uri])
    return playlist, segments


def _verify_transcode(
    params: Mapping[str, Any],
    folder: Path,
    names: list[str],
    source: dict[str, Any] | None,
    compare: Path | None,
    limits: CheckLimits,
) -> list[Check]:
    try:
        playlist, segments = _rendition(folder, names)
    except (PlaylistError, ValueError) as exc:
        return [fail("playlist", str(exc))]
    checks = [passed("playlist", f"VOD playlist, {len(playlist.segments)} segment(s)")]
    items: list[tuple[Media, str]] = [(seg, f"segment {i}") for i, seg in enumerate(segments)]
    probes = _probe_all(items, limits)
    if not isinstance(probes, list):
        return [*checks, probes]
    checks += check_transcode(params, playlist, "index.m3u8", probes, names, source)
    if compare is not None:
        checks.append(_compare_renditions(folder, compare, segments, limits))
    return checks


def _same_work(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Same job class, parameters and input hashes. The client and nonce may differ, and
    so may `threads`: it changes how the work runs (and the bytes), not what it is."""
    a, b = mine.get("spec") or {}, theirs.get("spec") or {}
    pa = {k: v for k, v in (a.get("params") or {}).items() if k != "threads"}
    pb = {k: v for k, v in (b.get("params") or {}).items() if k != "threads"}
    same = a.get("job_class") == b.get("job_class") and a.get("inputs") == b.get("inputs")
    return same and pa == pb and theirs.get("error") is None


def _compare_renditions(
    folder: Path, other: Path, segments: list[list[Path]], limits: CheckLimits
) -> Check:
    mine, theirs = read_manifest(folder), read_manifest(other)
    if not _same_work(mine, theirs):
        return fail("compare", "the other result is not a successful run of the same work")
    if mine["runtime"] == theirs["runtime"]:
        a = sorted((x["name"], x["sha256"]) for x in mine["artifacts"])
        b = sorted((x["name"], x["sha256"]) for x in theirs["artifacts"])
        if a == b:
            return passed("exact_match", "same runtime fingerprint, identical artifacts")
        return fail("exact_match", "same runtime fingerprint but different artifacts")
    names = [str(x["name"]) for x in theirs["artifacts"]]
    try:
        _, their_segments = _rendition(other, names)
        if len(their_segments) != len(segments):
            return fail("psnr", "the renditions have different segment counts")
        values = psnr(segments, their_segments, limits)  # decoded in a check child
    except (PlaylistError, ValueError, OSError) as exc:
        return fail("psnr", f"cannot compare: {exc}")
    except ExecutorError as exc:
        return fail("psnr", exc.message)
    return check_psnr(values)


def _verify_llm(
    params: Mapping[str, Any],
    manifest: Mapping[str, Any],
    model: Path | None,
    compare: Path | None,
) -> list[Check]:
    checks = check_generation(params, manifest)
    if any(c.status == "fail" for c in checks):
        return checks
    output = manifest["output"]
    if compare is not None:
        other = read_manifest(compare)
        if _same_work(manifest, other):
            checks.append(compare_exact(params, manifest, other))
        else:
            checks.append(fail("compare", "the other result is not a run of the same work"))
    if model is None:
        checks.append(skipped("teacher_forced", "no --input model given"))
        return checks
    from node.llm_check import score_completion

    try:
        scores = score_completion(
            model, params, output["tokens"], include_eos=output["finish_reason"] == "eos"
        )
    except ExecutorError as exc:
        return [*checks, fail("teacher_forced", exc.message)]
    text = scores.detokenized.decode("utf-8", errors="replace")
    if output["finish_reason"] == "stop" and not text.startswith(output["text"]):
        checks.append(fail("text", "text is not the start of the decoded tokens"))
    elif output["finish_reason"] != "stop" and text != output["text"]:
        checks.append(fail("text", "text is not the decoded tokens"))
    else:
        checks.append(passed("text", "text matches the tokens"))
    if scores.prompt_tokens != manifest["metrics"].get("prompt_tokens"):
        checks.append(fail("prompt", "prompt token count differs from the model's tokenizer"))
    n = len(scores.positions)
    checks.append(
        check_teacher_forced(SamplingPolicy.from_params(params), scores.positions, n_claimed=n)
    )
    return checks
