"""`audiovisual_digits`: scikit-learn's digits as short clips with a sound track, built so that
neither modality alone can name every digit but the two together can.

Each example is one real digit image (10 classes, the digit) and
- video: NUM_FRAMES grayscale 16x16 frames, the digit image (upsampled bilinearly) plus
  independent pixel noise per frame, EXCEPT for a fixed OCCLUDED_FRACTION (3/4) of the
  examples of each digit in OCCLUDED_DIGITS (5-9), whose frames are replaced by uniform noise
  drawn without looking at the image (fully occluded: they carry no trace of the digit);
- audio: a waveform at SAMPLE_RATE Hz holding a pure tone at TONES_HZ[digit % 5] (random
  amplitude and phase) plus white noise. Digits d and d + 5 share a tone: the waveform is a
  function of digit % 5 and of random draws that do not depend on the digit, so the two
  classes of a pair have exactly the same audio distribution.

Best accuracy of each modality alone (classes are balanced to within a few examples; `a` is
the accuracy of naming a visible digit image, ~0.99 for a good model):
- audio alone: 50% (the tone gives the pair {k, k + 5}, never which of the two);
- video alone: 0.5 a (digits 0-4, always visible) + 0.5 (0.25 a + 0.75 / 5) (digits 5-9:
  visible a quarter of the time, else only "one of 5-9") = 0.625 a + 0.075 ~ 69%;
- both: ~100%. An occluded clip says "5-9" and the tone picks the one digit of the pair in
  5-9; a visible clip only has to tell the two digits of its tone's pair apart (k vs k + 5).

The digit images follow `digits_dataset`'s fixed stratified split (1,437 train / 360 test
images, each used once). Records are written in the real layout (core/docs/video_records.md:
JPEG frames, `WAVEFORM/feature/floats` with `WAVEFORM/sample_rate`) and read back through
`audiovisual_dataset`, which turns the waveform into a log-mel spectrogram of
NUM_SPEC_FRAMES x NUM_MEL_BINS. Generated once (seconds), deterministically, into
`{data_dir}/{VERSION}/` (default data_dir ~/.cache/scenic/audiovisual_digits): written to a
temporary folder, then renamed into place, so an interrupted run never leaves half a data set.
"""

from __future__ import annotations

import json
import os

import numpy as np

from scenic.dataset_lib import (
    audiovisual_dataset,
    dataset_utils,
    digits_dataset,
    video_dataset,
    write_video_records,
)

VERSION = "1.0.0"
NUM_CLASSES = 10
SIZE = 16
NUM_FRAMES = 4
FRAME_NOISE = 0.1  # std of the per-frame pixel noise on visible clips, in [0, 1] units
OCCLUDED_DIGITS = (5, 6, 7, 8, 9)
OCCLUDED_FRACTION = 0.75
TONES_HZ = (350.0, 700.0, 1200.0, 1900.0, 2900.0)  # digit % 5 -> tone
SAMPLE_RATE = 8000
STFT = {"stft_frame_length": 256, "stft_frame_step": 128, "fft_length": 256}
NUM_SPEC_FRAMES = 16
NUM_SAMPLES = (NUM_SPEC_FRAMES - 1) * 128 + 256  # exactly NUM_SPEC_FRAMES STFT frames
NUM_MEL_BINS = 32
MEL_EDGES_HZ = (50.0, 4000.0)
AMPLITUDE_RANGE = (0.3, 0.8)
AUDIO_NOISE = 0.05  # std of the white noise added to the tone
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "scenic", "audiovisual_digits")
TEST_FRACTION = 0.2
JPEG_QUALITY = 95


def occlusion_mask(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """bool [N]: exactly round(OCCLUDED_FRACTION * count) examples of each occluded digit."""
    occluded = np.zeros(len(digits), bool)
    for d in OCCLUDED_DIGITS:
        members = np.flatnonzero(digits == d)
        chosen = rng.permutation(members)[: round(OCCLUDED_FRACTION * len(members))]
        occluded[chosen] = True
    return occluded


def render_video(images: np.ndarray, occluded: np.ndarray, rng: np.random.Generator):
    """uint8 frames [N, NUM_FRAMES, SIZE, SIZE]: noisy digit images, or pure noise where
    `occluded` (drawn for every example, so occluded frames never depend on the image)."""
    n = len(images)
    noise = rng.normal(0.0, FRAME_NOISE, (n, NUM_FRAMES, SIZE, SIZE))
    occluder = rng.random((n, NUM_FRAMES, SIZE, SIZE))
    visible = np.clip(images[:, None] + noise, 0.0, 1.0)
    frames = np.where(occluded[:, None, None, None], occluder, visible)
    return np.round(frames * 255.0).astype(np.uint8)


def render_audio(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 waveforms [N, NUM_SAMPLES]: the tone of digit % 5 plus white noise. The random
    draws do not depend on the digits, so digits d and d + 5 give identical waveforms."""
    n = len(digits)
    amplitude = rng.uniform(*AMPLITUDE_RANGE, n)
    phase = rng.uniform(0.0, 2 * np.pi, n)
    noise = rng.normal(0.0, AUDIO_NOISE, (n, NUM_SAMPLES))
    freq = np.asarray(TONES_HZ)[digits % 5]
    t = np.arange(NUM_SAMPLES) / SAMPLE_RATE
    tone = amplitude[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None] + phase[:, None])
    return (tone + noise).astype(np.float32)


def generate_split(images: np.ndarray, digits: np.ndarray, seed: int):
    """(frames uint8 [N, T, 16, 16], waveforms [N, NUM_SAMPLES], occluded bool [N])."""
    rng = np.random.default_rng(seed)
    occluded = occlusion_mask(digits, rng)
    frames = render_video(images, occluded, rng)
    return frames, render_audio(digits, rng), occluded


def load_digit_split():
    """(train images [N, 16, 16] in [0, 1], train digits, test images, test digits)."""
    train_x, train_y, test_x, test_y = digits_dataset.load_split(SIZE, TEST_FRACTION)
    return train_x[..., 0], train_y, test_x[..., 0], test_y


def write_split(path: str, split: str, frames, waveforms, digits, occluded) -> int:
    encoded = write_video_records.encode_frames(frames.reshape(-1, SIZE, SIZE, 1), JPEG_QUALITY)

    def examples():
        for k in range(len(digits)):
            yield {
                "video_id": f"{split}-{k:04d}-{digits[k]}{'-occluded' if occluded[k] else ''}",
                "frames": encoded[k * NUM_FRAMES : (k + 1) * NUM_FRAMES],
                "labels": int(digits[k]),
                "waveform": waveforms[k],
                "sample_rate": SAMPLE_RATE,
            }

    write_video_records.write_video_records(examples(), path, quality=JPEG_QUALITY)
    return len(digits)


def prepare(data_dir: str | None = None) -> str:
    """The folder holding train.tfrecord and test.tfrecord, generated first if missing."""
    root = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)

    def write(folder):
        train_x, train_y, test_x, test_y = load_digit_split()
        info = {"version": VERSION, "occluded_fraction": OCCLUDED_FRACTION, "tones_hz": TONES_HZ}
        for split, images, digits, seed in (
            ("train", train_x, train_y, 1),
            ("test", test_x, test_y, 2),
        ):
            frames, waveforms, occluded = generate_split(images, digits, seed)
            path = os.path.join(folder, f"{split}.tfrecord")
            info[f"num_{split}"] = write_split(path, split, frames, waveforms, digits, occluded)
            info[f"num_{split}_occluded"] = int(occluded.sum())
        with open(os.path.join(folder, "info.json"), "w") as f:
            json.dump(info, f, indent=1)

    return dataset_utils.write_once(os.path.join(root, VERSION), write)


def build_audiovisual_digits(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    modalities=audiovisual_dataset.MODALITIES,
    shift_pixels: int = 0,
    spec_augment: bool = True,
    spec_time_masks: int = 2,
    spec_time_mask_max: int = 3,
    spec_freq_masks: int = 1,
    spec_freq_mask_max: int = 3,
    in_memory: bool = True,
    with_video_id: bool = False,
    multi_label: bool = False,
    num_test_clips: int = 1,
) -> video_dataset.VideoDataset:
    """Audio-visual digits for this host: inputs {'rgb': [B, 4, 16, 16, 1] in [-1, 1],
    'spectrogram': [B, 16, 32, 1] log-mel} (the `modalities` asked for), 10 classes.

    `multi_label`: labels as multi-hot [10] floats (one-hot here: one digit per clip), for
    sigmoid models and mAP. `num_test_clips`: views of the multi-view eval pass.
    `shift_pixels`: train clips translated by up to this many pixels (as `digits`)."""
    folder = prepare(data_dir)
    ds = audiovisual_dataset.build_audiovisual_tfrecord(
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        train_files=os.path.join(folder, "train.tfrecord"),
        eval_files=os.path.join(folder, "test.tfrecord"),
        num_classes=NUM_CLASSES,
        modalities=modalities,
        num_frames=NUM_FRAMES,
        image_size=SIZE,
        channels=1,
        train_crop="none",  # digits are centred; a crop or flip would change them
        random_flip=False,
        shift_pixels=shift_pixels,
        audio_feature="waveform",
        num_spec_frames=NUM_SPEC_FRAMES,
        num_mel_bins=NUM_MEL_BINS,
        sample_rate=SAMPLE_RATE,
        lower_edge_hertz=MEL_EDGES_HZ[0],
        upper_edge_hertz=MEL_EDGES_HZ[1],
        spec_augment=spec_augment,
        spec_time_masks=spec_time_masks,
        spec_time_mask_max=spec_time_mask_max,
        spec_freq_masks=spec_freq_masks,
        spec_freq_mask_max=spec_freq_mask_max,
        in_memory=in_memory,
        with_video_id=with_video_id,
        multi_label=multi_label,
        num_test_clips=num_test_clips,
        **STFT,
    )
    ds.meta_data.update(data_dir=folder)
    return ds
