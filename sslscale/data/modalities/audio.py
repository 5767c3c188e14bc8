"""Audio: a field of kind "audio", mono clips of 16-bit PCM at the manifest's `sample_rate`, each member the clip's
little-endian int16 samples (its length is its byte count / 2, at most the manifest's `max_samples`).

A batch is int16 (N, max_samples) with every clip padded at its end with PAD (-32768), a value the sources never
write (they clip to +-32767), so a batch carries each clip's length as text's padding id does. The views
(`audio_views`, on Ray Data's tasks) are a random crop and wav2vec 2.0's span masks and distractors, drawn as a
function of (seed, epoch, sample id); the encoder family is wav2vec (encoders/wav2vec.py); the no-learning baseline
is a log-mel spectrogram (80 bins, mean and standard deviation over time), computed in torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sslscale.data.modalities.base import Layout, Modality
from sslscale.data.views import uniforms
from sslscale.errors import SslscaleError

PAD = -32768  # a batch's padding after a clip's last sample; sources clip real samples to [-32767, 32767]
SAMPLE_RATE = 16000
MEL_BINS, MEL_WINDOW, MEL_HOP = 80, 400, 160  # log-mel baseline: 80 bins, 25 ms windows every 10 ms at 16 kHz


def to_pcm16(wave: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16, clipped to +-32767 so that no sample equals PAD."""
    return np.clip(np.rint(np.asarray(wave, np.float64) * 32767), -32767, 32767).astype(np.int16)


def lengths(batch: np.ndarray) -> np.ndarray:
    """(N,) int64: each clip's samples before its PAD padding."""
    return (np.asarray(batch) != PAD).sum(axis=1).astype(np.int64)


def frame_count(samples, receptive: int, hop: int):
    """Frames a convolutional stack of this receptive field and hop makes from `samples` (an int or an array)."""
    return np.maximum(0, (np.asarray(samples) - receptive) // hop + 1)


@dataclass(frozen=True)
class AudioLayout(Layout):
    """The views a method asks of an audio field: `crop` samples of each clip (a random window of a longer clip;
    0: the whole padded clip), and with `mask_prob` > 0 wav2vec 2.0's masks over the encoder's frames (`frame_hop`
    samples apart, `frame_receptive` samples wide): each frame starts a span of `mask_length` masked frames with
    probability mask_prob (at least `min_masks` spans), and `num_negatives` distractors per masked frame, drawn from
    the other masked frames of the same clip."""

    crop: int = 0
    mask_prob: float = 0.0
    mask_length: int = 10
    min_masks: int = 2
    num_negatives: int = 0
    frame_hop: int = 320
    frame_receptive: int = 400

    def fields(self) -> dict[str, str]:
        """wave (int16 PCM, PAD-padded), then mask (bool per frame) and distractors (frame ids) when masking."""
        return {"wave": "ids", **({"mask": "ids", "distractors": "ids"} if self.mask_prob > 0 else {})}


def crop_clips(batch: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int, crop: int) -> np.ndarray:
    """(N, crop) int16: a random window of `crop` samples of each longer clip (offset a function of (seed, epoch,
    id)), a shorter one whole and PAD-padded."""
    n, have = lengths(batch), batch.shape[1]
    wide = np.pad(batch, ((0, 0), (0, max(0, crop - have))), constant_values=PAD)
    offset = np.floor(uniforms(seed, epoch, ids, 0, 1)[:, 0] * np.maximum(n - crop + 1, 1)).astype(np.int64)
    return np.take_along_axis(wide, offset[:, None] + np.arange(crop)[None, :], axis=1)


def span_masks(frames: np.ndarray, total: int, ids: np.ndarray, *, seed: int, epoch: int, layout: AudioLayout):
    """wav2vec 2.0's masks (Baevski et al. 2020, sec. 3.1 and 4.2) over clips of `frames` (N,) valid frames out of
    `total`: floor(mask_prob x frames + u) spans (at least min_masks, at most the possible starts) start at distinct
    random frames among the first frames - mask_length + 1, each masking mask_length frames (spans may overlap; none
    passes the last valid frame). Each masked frame gets num_negatives distractors, uniform over the clip's other
    masked frames (itself where it is the only one). Returns (mask (N, total) bool, distractors (N, total, K) int64,
    0 where unmasked). A function of (seed, epoch, id) through `uniforms`."""
    k = layout.num_negatives
    u = uniforms(seed, epoch, ids, 1, 1 + total + total * k)
    mask = np.zeros((len(ids), total), bool)
    distractors = np.zeros((len(ids), total, k), np.int64)
    for i, sz in enumerate(np.asarray(frames).tolist()):
        starts = max(sz - layout.mask_length + 1, 1) if sz else 0
        count = min(max(layout.min_masks, int(layout.mask_prob * sz + u[i, 0])), starts)
        chosen = np.argsort(u[i, 1:1 + starts], kind="stable")[:count]
        span = (chosen[:, None] + np.arange(layout.mask_length)[None, :]).ravel()
        mask[i, span[span < sz]] = True
        masked = np.flatnonzero(mask[i])
        if k and len(masked):
            draw = u[i, 1 + total:].reshape(total, k)[: len(masked)]
            j = np.floor(draw * max(len(masked) - 1, 1)).astype(np.int64)
            j += (j >= np.arange(len(masked))[:, None]) & (len(masked) > 1)  # skip the frame itself
            distractors[i, masked] = masked[np.minimum(j, len(masked) - 1)]
    return mask, distractors


def audio_views(batch: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int,
                layout: AudioLayout) -> dict[str, np.ndarray]:
    """An audio method's fields from PAD-padded clips (N, T) int16: "wave" (N, crop or T) int16, and with
    mask_prob > 0 "mask" and "distractors" over its frames (span_masks)."""
    wave = crop_clips(batch, ids, seed=seed, epoch=epoch, crop=layout.crop) if layout.crop else np.asarray(batch)
    out = {"wave": wave.astype(np.int16)}
    if layout.mask_prob > 0:
        total = int(frame_count(wave.shape[1], layout.frame_receptive, layout.frame_hop))
        frames = frame_count(lengths(wave), layout.frame_receptive, layout.frame_hop)
        out["mask"], out["distractors"] = span_masks(frames, total, ids, seed=seed, epoch=epoch, layout=layout)
    return out


def log_mel(batch: np.ndarray, sample_rate: int = SAMPLE_RATE, chunk: int = 256):
    """The log-mel baseline's features (N, 2 x MEL_BINS) float32 of PAD-padded clips: torch.stft power spectra of
    25 ms Hann windows every 10 ms, an 80-bin HTK mel filterbank from 0 Hz to Nyquist, log(mel + 1e-6), then each
    bin's mean and standard deviation over the clip's own frames (its padding left out); `chunk` clips at a time."""
    import torch

    if len(batch) > chunk:
        return torch.cat([log_mel(batch[i:i + chunk], sample_rate, chunk) for i in range(0, len(batch), chunk)])
    short = max(0, MEL_WINDOW - batch.shape[1])  # clips shorter than a window: one window, zero-padded
    wave = torch.from_numpy(np.pad(np.where(batch == PAD, 0, batch), ((0, 0), (0, short))).astype(np.float32) / 32768)
    spec = torch.stft(wave, MEL_WINDOW, MEL_HOP, window=torch.hann_window(MEL_WINDOW), center=False,
                      return_complex=True).abs().pow(2)  # (N, F, frames)
    mel = torch.log(mel_filterbank(MEL_WINDOW // 2 + 1, sample_rate) @ spec + 1e-6)  # (N, bins, frames)
    frames = torch.from_numpy(np.maximum(frame_count(lengths(batch), MEL_WINDOW, MEL_HOP), 1))
    valid = (torch.arange(mel.shape[2])[None, :] < frames[:, None]).float()[:, None, :]  # (N, 1, frames)
    mean = (mel * valid).sum(2) / frames[:, None]
    std = (((mel - mean[..., None]) ** 2 * valid).sum(2) / frames[:, None]).sqrt()
    return torch.cat([mean, std], dim=1).float()


def mel_filterbank(n_freqs: int, sample_rate: int, bins: int = MEL_BINS):
    """(bins, n_freqs) triangular HTK mel filters over 0 Hz .. sample_rate / 2."""
    import torch

    def mel(hz):
        return 2595 * np.log10(1 + hz / 700)

    edges = 700 * (10 ** (np.linspace(0, mel(sample_rate / 2), bins + 2) / 2595) - 1)  # Hz
    hz = np.linspace(0, sample_rate / 2, n_freqs)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return torch.from_numpy(np.maximum(0, np.minimum((hz - lo) / (mid - lo), (hi - hz) / (hi - mid)))).float()


class Audio(Modality):
    """A field of mono 16-bit clips (sample_rate, max_samples in the manifest)."""

    kind = "audio"
    layout = AudioLayout
    noun = "audio"
    encoding = "pcm16"
    labelled_field = "wave"
    labelled_input = "ids"

    @property
    def size(self) -> int:
        return self.entry["max_samples"]

    @property
    def sample_rate(self) -> int:
        return self.entry["sample_rate"]

    def describe(self) -> str:
        return f"a mono clip of 16-bit samples at {self.sample_rate} Hz"

    def encode(self, sample) -> bytes:
        """A clip's int16 samples -> their little-endian bytes."""
        return np.asarray(sample, "<i2").tobytes()

    def decode(self, data: bytes) -> np.ndarray:
        """A member's bytes -> the clip, int16 (max_samples,) PAD-padded; one line when they are not such a clip."""
        n = len(data) // 2
        if len(data) % 2 or not 0 < n <= self.size:
            raise SslscaleError(f"{len(data)} bytes are not a clip of up to {self.size} 16-bit samples: the corpus "
                                "is damaged: check it with verify_shards and re-run prepare")
        return np.pad(np.frombuffer(data, "<i2").astype(np.int16), (0, self.size - n), constant_values=PAD)

    def blank(self) -> np.ndarray:
        return np.zeros(self.size, np.int16)

    def views(self, samples, ids, *, seed, epoch, layout: AudioLayout) -> dict[str, np.ndarray]:
        return audio_views(samples, ids, seed=seed, epoch=epoch, layout=layout)

    def encoder_input(self) -> dict:
        return {"sample_rate": self.sample_rate, "max_samples": self.size}

    def to_encoder(self, batch: np.ndarray):
        import torch

        return torch.from_numpy(np.asarray(batch, np.int16))

    def to_engine(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, np.int16)

    def check_fits(self, encoder, batch: np.ndarray, where: str = "target") -> None:
        """One line when the clips are at another sample rate than the encoder's."""
        if encoder.sample_rate != self.sample_rate:
            raise SslscaleError(f"{where} clips are sampled at {self.sample_rate} Hz but the encoder takes "
                                f"{encoder.sample_rate} Hz: prepare the target at that rate")

    def check_target(self, target: Modality, target_dir: str, corpus_dir: str | None, where: str) -> None:
        if target.sample_rate != self.sample_rate:
            raise SslscaleError(f"transfer.target {where} is sampled at {target.sample_rate} Hz but the encoder "
                                f"takes the corpus' {self.sample_rate} Hz: pick a target at that rate")

    def baseline(self, train_x: np.ndarray, test_x: np.ndarray):
        """Log-mel statistics (log_mel)."""
        return "logmel", log_mel(train_x, self.sample_rate), log_mel(test_x, self.sample_rate)

    def labelled(self, samples, view_ids, *, seed: int, views: dict) -> dict[str, np.ndarray]:
        return {"wave": np.asarray(samples, np.int16)}  # whole clips: no augmentation
