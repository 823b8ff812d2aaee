"""A strict reader for the HLS media playlists that media.transcode writes (RFC 8216)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.verify.manifest import ARTIFACT_NAME

__all__ = ["Playlist", "PlaylistError", "parse_playlist"]


class PlaylistError(ValueError):
    """The text is not a complete VOD media playlist with plain relative references."""


@dataclass(frozen=True, slots=True)
class Playlist:
    target_duration: int
    segments: tuple[tuple[str, float], ...]  # (uri, EXTINF seconds)
    init: str | None  # EXT-X-MAP URI (fragmented MP4 segments)

    @property
    def references(self) -> tuple[str, ...]:
        uris = tuple(uri for uri, _ in self.segments)
        return uris if self.init is None else (self.init, *uris)

    @property
    def duration_s(self) -> float:
        return sum(seconds for _, seconds in self.segments)


def _uri(value: str) -> str:
    # Only flat names in the result folder: no schemes, no paths, no "..".
    if not ARTIFACT_NAME.match(value) or ".." in value:
        raise PlaylistError(f"reference {value!r} is not a plain file name")
    return value


def parse_playlist(text: str, *, max_segments: int = 100_000) -> Playlist:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError("does not start with #EXTM3U")
    target: int | None = None
    init: str | None = None
    vod = ended = False
    segments: list[tuple[str, float]] = []
    pending: float | None = None
    for line in lines[1:]:
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = int(line.split(":", 1)[1])
        elif line == "#EXT-X-PLAYLIST-TYPE:VOD":
            vod = True
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif line.startswith("#EXT-X-MAP:"):
            attrs = line.split(":", 1)[1]
            if not attrs.startswith('URI="') or not attrs.endswith('"') or init is not None:
                raise PlaylistError(f"unsupported map line {line!r}")
            init = _uri(attrs[5:-1])
        elif line.startswith("#EXTINF:"):
            try:
                pending = float(line.split(":", 1)[1].split(",", 1)[0])
            except ValueError:
                raise PlaylistError(f"bad segment duration {line!r}") from None
            if not 0 <= pending < 3600:
                raise PlaylistError(f"bad segment duration {line!r}")
        elif line.startswith("#"):
            continue  # other tags (version, media sequence) carry nothing we check
        else:
            if pending is None:
                raise PlaylistError(f"segment {line!r} has no #EXTINF")
            segments.append((_uri(line), pending))
            pending = None
            if len(segments) > max_segments:
                raise PlaylistError("too many segments")
    if target is None:
        raise PlaylistError("no #EXT-X-TARGETDURATION")
    if not (vod and ended):
        raise PlaylistError(
            "not a complete VOD playlist (#EXT-X-PLAYLIST-TYPE:VOD, #EXT-X-ENDLIST)"
        )
    if not segments:
        raise PlaylistError("no segments")
    return Playlist(target, tuple(segments), init)
