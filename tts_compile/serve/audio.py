"""Audio as the server sends it: 16-bit PCM, in a WAV file or raw, whole or streamed (a WAV header whose sizes say
"to the end", then raw PCM pieces, as api_v2 streams); Ogg Vorbis where `soundfile` (libsndfile) can write it, a
stream of it as one Ogg stream per piece, chained, as api_v2 streams ogg; AAC in ADTS frames where PyAV (FFmpeg's
encoder) is installed, a stream of it as each piece's frames in turn, as api_v2 streams aac."""

from __future__ import annotations

import io
import struct

import torch

try:
    import soundfile
except (ImportError, OSError):  # not installed, or no libsndfile: no ogg
    soundfile = None
try:
    import av
except ImportError:  # not installed: no aac
    av = None

MEDIA_TYPES = {"wav": "audio/wav", "raw": "audio/raw"}
if soundfile is not None and "OGG" in soundfile.available_formats():
    MEDIA_TYPES["ogg"] = "audio/ogg"
if av is not None and "aac" in av.codecs_available:
    MEDIA_TYPES["aac"] = "audio/aac"
STREAMED = 0xFFFFFFFF  # a streamed WAV's RIFF and data sizes: unknown, read to the end


def pcm16(audio: torch.Tensor) -> bytes:
    """Float audio (samples,) in [-1, 1] as little-endian 16-bit PCM (clipped)."""
    return (audio.detach().float().cpu().clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()


def wav_header(rate: int, data_bytes: int | None = None) -> bytes:
    """A 44-byte mono 16-bit PCM WAV header for `data_bytes` of samples (None: a stream of unknown length)."""
    riff = STREAMED if data_bytes is None else 36 + data_bytes
    data = STREAMED if data_bytes is None else data_bytes
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16,
                       b"data", data)


def encode(audio: torch.Tensor, rate: int, media_type: str) -> bytes:
    """The whole audio (or a stream's piece) as a WAV file, raw PCM, an Ogg Vorbis stream or AAC (ADTS) frames."""
    if media_type == "aac":
        return aac(audio, rate)
    if media_type == "ogg":
        buffer = io.BytesIO()
        soundfile.write(buffer, audio.detach().float().cpu().clamp(-1, 1).numpy(), rate, format="OGG",
                        subtype="VORBIS")
        return buffer.getvalue()
    samples = pcm16(audio)
    return wav_header(rate, len(samples)) + samples if media_type == "wav" else samples


def aac(audio: torch.Tensor, rate: int) -> bytes:
    """AAC frames in ADTS (self-delimiting: pieces encoded one by one play as one stream), at FFmpeg's default
    bit rate."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="adts") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio.detach().float().cpu().clamp(-1, 1).numpy()[None], format="fltp",
                                           layout="mono")
        frame.sample_rate = rate
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    return buffer.getvalue()
