"""Deterministic test inputs made locally: media clips with PyAV and GGUF models with `gguf`."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["BYTE_VOCAB_SIZE", "make_bench_gguf", "make_clip", "make_tiny_gguf"]

BYTE_VOCAB_SIZE = 259  # <unk>, <s>, </s> and the 256 byte tokens


def make_clip(
    path: str | Path,
    seconds: float = 2.0,
    width: int = 160,
    height: int = 90,
    fps: int = 25,
    audio: bool = True,
    *,
    keyframe_interval_s: float = 1.0,
    container: str | None = None,
    offset: int = 0,
) -> Path:
    """Write an H.264 (+ AAC tone) clip: moving colour bars, a keyframe every interval.

    Encoded with one thread, so the same arguments always give the same bytes; `offset`
    starts the pattern that many frames later (other pictures, same shape).
    """
    import av

    path = Path(path)
    n_frames = max(1, round(seconds * fps))
    gop = max(1, round(keyframe_interval_s * fps))
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.thread_count = 1
        video.options = {
            "preset": "ultrafast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        }
        tone = None
        if audio:
            tone = out.add_stream("aac", rate=48_000)
            tone.layout = "stereo"
        xs = np.arange(width, dtype=np.int32)
        ys = np.arange(height, dtype=np.int32)[:, None]
        for n in range(n_frames):
            i = n + offset
            img = np.empty((height, width, 3), dtype=np.uint8)
            img[:, :, 0] = (xs * 255 // max(1, width - 1) + i * 7) % 256
            img[:, :, 1] = (ys * 255 // max(1, height - 1) + i * 3) % 256
            img[:, :, 2] = ((xs // 8 + ys // 8 + i) % 2) * 200
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = n
            frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if tone is not None:
            rate, chunk = 48_000, 1024
            total = round(seconds * rate)
            for start in range(0, total, chunk):
                t = np.arange(start, min(total, start + chunk)) / rate
                wave = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(
                    np.stack([wave, wave]), format="fltp", layout="stereo"
                )
                frame.sample_rate = rate
                frame.pts = start
                frame.time_base = Fraction(1, rate)
                out.mux(tone.encode(frame))
            out.mux(tone.encode(None))
    return path


def _byte_vocab() -> tuple[list[str], list[float], list[int]]:
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    return tokens, scores, [int(t) for t in types]


def _write_llama_gguf(
    path: Path,
    *,
    dim: int,
    layers: int,
    heads: int,
    ffn: int,
    vocab: int,
    ctx: int,
    seed: int,
    quant: str,
    name: str,
) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    tokens, scores, types = _byte_vocab()
    for i in range(len(tokens), vocab):  # filler pieces give a realistic vocabulary size
        tokens.append(f"\u2581t{i}")
        scores.append(-1000.0 - i)
        types.append(int(gguf.TokenType.NORMAL))

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(ctx)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(dim // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)

    qtype = gguf.GGMLQuantizationType[quant]
    writer.add_file_type(
        {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16}.get(
            quant, gguf.LlamaFileType.MOSTLY_Q8_0
        )
    )

    def matrix(name: str, rows: int, cols: int, scale: float) -> None:
        data = (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(np.float32)
        if name == "output.weight":
            data[:3] = 0.0  # <unk>, <s>, </s> never win: generation runs to max_tokens
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            packed = gguf.quants.quantize(data, qtype)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)

    def norm(name: str) -> None:
        writer.add_tensor(name, np.ones(dim, dtype=np.float32))

    std = 1.0 / np.sqrt(dim)
    matrix("token_embd.weight", vocab, dim, 1.0)
    for b in range(layers):
        norm(f"blk.{b}.attn_norm.weight")
        for part in ("q", "k", "v", "output"):
            matrix(f"blk.{b}.attn_{part}.weight", dim, dim, std)
        norm(f"blk.{b}.ffn_norm.weight")
        matrix(f"blk.{b}.ffn_gate.weight", ffn, dim, std)
        matrix(f"blk.{b}.ffn_up.weight", ffn, dim, std)
        matrix(f"blk.{b}.ffn_down.weight", dim, ffn, 1.0 / np.sqrt(ffn))
    norm("output_norm.weight")
    # A large output scale keeps logits well apart, so greedy choices are not near-ties.
    matrix("output.weight", vocab, dim, 4.0 * std)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_tiny_gguf(path: str | Path, *, seed: int = 7) -> Path:
    """A 2-layer, dim-64 Llama-architecture model with the 259-token byte vocabulary."""
    return _write_llama_gguf(
        Path(path),
        dim=64,
        layers=2,
        heads=4,
        ffn=128,
        vocab=BYTE_VOCAB_SIZE,
        ctx=2048,
        seed=seed,
        quant="F32",
        name="c0-tiny",
    )


def make_bench_gguf(path: str | Path, *, seed: int = 11) -> Path:
    """A realistically shaped model: dim 768, 8 layers, 12 heads, FFN 2048, 32000-token
    vocabulary, Q8_0 weights (about 106M parameters, ~113 MB)."""
    return _write_llama_gguf(
        Path(path),
        dim=768,
        layers=8,
        heads=12,
        ffn=2048,
        vocab=32_000,
        ctx=4096,
        seed=seed,
        quant="Q8_0",
        name="c0-bench-106m",
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m testnet.testdata clip|tiny-model|bench-model PATH`: write one input."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m testnet.testdata", description=main.__doc__)
    parser.add_argument("kind", choices=("clip", "tiny-model", "bench-model"))
    parser.add_argument("path", type=Path)
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length")
    parser.add_argument("--size", default="640x360", help="clip WIDTHxHEIGHT")
    parser.add_argument("--no-audio", action="store_true")
    args = parser.parse_args(argv)
    args.path.parent.mkdir(parents=True, exist_ok=True)
    if args.kind == "clip":
        width, height = (int(v) for v in args.size.lower().split("x"))
        make_clip(args.path, args.seconds, width, height, 25, audio=not args.no_audio)
    elif args.kind == "tiny-model":
        make_tiny_gguf(args.path)
    else:
        make_bench_gguf(args.path)
    print(args.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
