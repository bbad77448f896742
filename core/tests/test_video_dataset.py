"""Video TFRecords: written in the documented layout, read back through `video_dataset`;
the writer tool; the built-in `moving_digits` data set."""

import os
import re
import sys

import numpy as np
import pytest

from scenic.dataset_lib import moving_digits, record_io, video_dataset, video_ops
from scenic.dataset_lib import write_video_records as wvr

TOL = 8 / 127.5  # JPEG error on these smooth frames, in [-1, 1] units


def frame_pixels(video: int, t: int, height: int = 16, width: int = 20) -> np.ndarray:
    """uint8 [H, W, 3]: R a horizontal ramp, G encodes the frame index, B the video."""
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (8 * np.arange(width))[None, :]
    frame[..., 1] = 10 * t + 5
    frame[..., 2] = 20 * video + 5
    return frame


def make_videos(lengths, height=16, width=20, labels=None):
    return [
        {
            "video_id": f"vid{v}",
            "frames": np.stack([frame_pixels(v, t, height, width) for t in range(n)]),
            "labels": v % 5 if labels is None else labels[v],
        }
        for v, n in enumerate(lengths)
    ]


def frame_index(clip: np.ndarray) -> np.ndarray:
    """Frame indices [..., T] recovered from the G channel of clips in [-1, 1]."""
    g = (clip[..., 1] + 1.0) * 127.5
    return np.round((g.mean(axis=(-1, -2)) - 5) / 10).astype(int)


def video_index(clip: np.ndarray) -> np.ndarray:
    b = (clip[..., 2] + 1.0) * 127.5
    return np.round((b.mean(axis=(-1, -2, -3)) - 5) / 20).astype(int)


def build(tmp_path, **kwargs):
    args = dict(
        batch_size=4,
        eval_batch_size=4,
        seed=0,
        train_files=str(tmp_path / "train*"),
        eval_files=str(tmp_path / "eval*"),
        num_classes=5,
        num_frames=4,
        stride=2,
        image_size=16,
    )
    args.update(kwargs)
    return video_dataset.build_video_tfrecord(**args)


@pytest.fixture
def records(tmp_path):
    """Train: 6 videos of 3-12 frames in 2 shards; eval: 5 videos of 5-11 frames."""
    wvr.write_video_records(make_videos([3, 12, 7, 9, 10, 4]), str(tmp_path / "train"), 2)
    wvr.write_video_records(make_videos([5, 11, 8, 6, 9]), str(tmp_path / "eval"))
    return tmp_path


def reference_indices(n, num_frames, stride, start):
    return (start + np.arange(num_frames) * stride) % n


def test_eval_round_trip_content_labels_and_centred_clips(records):
    ds = build(records, num_frames=3, stride=2, with_video_id=True)
    batches = list(ds.eval_batches())
    assert len(batches) == ds.num_eval_batches == 2
    lengths = [5, 11, 8, 6, 9]
    inputs = np.concatenate([b["inputs"] for b in batches])[:5]
    assert inputs.shape == (5, 3, 16, 16, 3) and inputs.dtype == np.float32
    np.testing.assert_array_equal(
        np.concatenate([b["label"] for b in batches])[:5], [0, 1, 2, 3, 4]
    )
    np.testing.assert_array_equal(
        np.concatenate([b["batch_mask"] for b in batches]), [1] * 5 + [0] * 3
    )
    for v, n in enumerate(lengths):
        start = max(n - 5, 0) // 2
        indices = reference_indices(n, 3, 2, start)
        # 16x20 frames: the eval crop is the central 16 columns (2..17).
        expected = np.stack([frame_pixels(v, t) for t in indices])[:, :, 2:18] / 127.5 - 1.0
        np.testing.assert_allclose(inputs[v], expected, atol=TOL)
        np.testing.assert_array_equal(frame_index(inputs[v]), indices)
    assert list(np.concatenate([b["video_id"] for b in batches])[:5]) == [
        f"vid{v}".encode() for v in range(5)
    ]


def test_train_temporal_sampling_matches_numpy_reference(records):
    ds = build(records, train_crop="none", random_flip=False, num_frames=3, stride=2)
    lengths = [3, 12, 7, 9, 10, 4]
    it = ds.train_batches(0)
    starts = {v: set() for v in range(6)}
    for _ in range(30):
        batch = next(it)
        for clip, label in zip(batch["inputs"], batch["label"]):
            v = int(video_index(clip))
            assert label == v % 5
            n, span = lengths[v], 5
            got = frame_index(clip)
            start = int(got[0])
            assert 0 <= start <= max(n - span, 0)
            np.testing.assert_array_equal(got, reference_indices(n, 3, 2, start))
            starts[v].add(start)
    assert starts[0] == {0} and starts[5] == {0}  # too short: start 0, wrap around
    assert len(starts[1]) >= 5  # 8 possible starts, 20 draws: random, not fixed


def test_train_batches_are_deterministic_resumable_and_split_over_hosts(records):
    ds = build(records)
    it = ds.train_batches(0)
    batches = [next(it) for _ in range(4)]
    assert batches[0]["inputs"].shape == (4, 4, 16, 16, 3)
    assert batches[0]["label"].dtype == np.int32
    assert -1.0 <= min(b["inputs"].min() for b in batches)
    assert max(b["inputs"].max() for b in batches) <= 1.0
    resumed = next(build(records).train_batches(3))
    np.testing.assert_array_equal(resumed["inputs"], batches[3]["inputs"])
    np.testing.assert_array_equal(resumed["label"], batches[3]["label"])
    halves = [
        next(build(records, process_index=p, process_count=2).train_batches(3)) for p in (0, 1)
    ]
    np.testing.assert_array_equal(
        np.concatenate([h["inputs"] for h in halves]), batches[3]["inputs"]
    )
    other = next(build(records, seed=1).train_batches(3))
    assert not np.array_equal(other["inputs"], batches[3]["inputs"])


def test_indexed_reading_gives_the_same_batches(records):
    in_memory, indexed = build(records), build(records, in_memory=False)
    for a, b in zip(in_memory.train_batches(2), indexed.train_batches(2)):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        break
    for a, b in zip(in_memory.eval_batches(), indexed.eval_batches()):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert indexed.meta_data["num_train_examples"] == 6


@pytest.mark.parametrize("crop", ["random_resized", "none"])
def test_decode_once_gives_the_same_batches(records, crop):
    """Videos of 3-12 frames: clips wrap around short ones; crops, flips, shifts all apply."""

    def batches(**kwargs):
        ds = build(records, train_crop=crop, random_wrap_shift=True, batch_size=6, **kwargs)
        it = ds.train_batches(3)
        return [next(it) for _ in range(3)]

    for a, b in zip(batches(), batches(decode_once=True)):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_decode_once_of_uniform_lengths_matches_numpy(tmp_path):
    videos = make_videos([6, 6, 6])
    paths = wvr.write_video_records(videos, str(tmp_path / "train"), quality=100)
    frames, offsets, labels = video_ops.decode_all_frames(
        record_io.load_records(paths, 5), 3, 5, False
    )
    np.testing.assert_array_equal(offsets, [0, 6, 12, 18])
    np.testing.assert_array_equal(labels, [0, 1, 2])
    expected = np.concatenate([v["frames"] for v in videos]).astype(int)
    assert frames.shape == expected.shape and np.abs(frames - expected).max() <= 8


def test_decode_once_rejects_frames_of_different_sizes(tmp_path):
    videos = make_videos([4]) + make_videos([5], height=12)
    paths = wvr.write_video_records(videos, str(tmp_path / "train"))
    records = record_io.load_records(paths, 5)
    with pytest.raises(ValueError, match="frames of one size"):
        video_ops.decode_all_frames(records, 3, 5, False)
    with pytest.raises(ValueError, match="in_memory"):
        build(tmp_path, eval_files=str(tmp_path / "train*"), decode_once=True, in_memory=False)


def wrap_shift_of(shifted: np.ndarray, plain: np.ndarray):
    """The (rows, columns) roll that turns clip `plain` [T, H, W, C] into `shifted`, or None."""
    height, width = plain.shape[1:3]
    for dy in range(height):
        for dx in range(width):
            if np.array_equal(np.roll(plain, (dy, dx), axis=(1, 2)), shifted):
                return dy, dx
    return None


def test_wrap_shift_rolls_each_clip_as_a_whole(records):
    def first_batch(**kwargs):
        kwargs.update(train_crop="none", random_flip=False, batch_size=6)
        return next(build(records, **kwargs).train_batches(2))

    plain, shifted = first_batch(), first_batch(random_wrap_shift=True)
    np.testing.assert_array_equal(plain["label"], shifted["label"])
    shifts = [wrap_shift_of(s, p) for s, p in zip(shifted["inputs"], plain["inputs"])]
    assert None not in shifts  # one roll for all frames of a clip, pixels unchanged
    assert len(set(shifts)) > 1 and any(dx > 0 for _, dx in shifts)
    again = first_batch(random_wrap_shift=True)  # deterministic in (seed, step)
    np.testing.assert_array_equal(again["inputs"], shifted["inputs"])


def translation_of(shifted: np.ndarray, plain: np.ndarray, pixels: int):
    """The (rows, columns) translation, black filled, that turns `plain` into `shifted`."""
    height, width = plain.shape[1:3]
    pad = [(0, 0), (pixels, pixels), (pixels, pixels), (0, 0)]
    padded = np.pad(plain, pad, constant_values=-1)
    for dy in range(-pixels, pixels + 1):
        for dx in range(-pixels, pixels + 1):
            top, left = pixels - dy, pixels - dx
            window = padded[:, top : top + height, left : left + width]
            if np.array_equal(window, shifted):
                return dy, dx
    return None


def test_shift_pixels_translates_each_clip_as_a_whole(records):
    def first_batch(**kwargs):
        args = {"train_crop": "none", "random_flip": False, "batch_size": 6, **kwargs}
        return next(build(records, **args).train_batches(3))

    plain, shifted = first_batch(), first_batch(shift_pixels=2)
    np.testing.assert_array_equal(plain["label"], shifted["label"])
    moves = [translation_of(s, p, 2) for s, p in zip(shifted["inputs"], plain["inputs"])]
    assert None not in moves  # one translation for every frame of a clip, black filled
    assert len(set(moves)) > 1 and any(m != (0, 0) for m in moves)
    assert all(max(abs(dy), abs(dx)) <= 2 for dy, dx in moves)
    np.testing.assert_array_equal(first_batch(shift_pixels=2)["inputs"], shifted["inputs"])
    # A new augmentation key leaves the existing augmentations' draws unchanged.
    flipped = first_batch(random_flip=True)
    both = first_batch(random_flip=True, shift_pixels=2)
    for f, b in zip(flipped["inputs"], both["inputs"]):
        assert translation_of(b, f, 2) is not None


@pytest.mark.parametrize("crop", ["random_resized", "multi_scale", "none"])
def test_train_crops_and_flip_keep_shapes(records, crop):
    batch = next(build(records, train_crop=crop, image_size=12, batch_size=6).train_batches(0))
    assert batch["inputs"].shape == (6, 4, 12, 12, 3)
    assert -1.0 <= batch["inputs"].min() and batch["inputs"].max() <= 1.0


def test_flip_mirrors_some_clips_and_keeps_the_rest(records):
    plain = next(
        build(records, train_crop="none", random_flip=False, batch_size=6).train_batches(1)
    )
    flipped = next(build(records, train_crop="none", batch_size=6).train_batches(1))
    mirrored = [
        np.array_equal(f, p[:, :, ::-1]) for f, p in zip(flipped["inputs"], plain["inputs"])
    ]
    same = [np.array_equal(f, p) for f, p in zip(flipped["inputs"], plain["inputs"])]
    assert all(m or s for m, s in zip(mirrored, same))
    assert any(mirrored) and any(same)


def test_multiview_shape_and_view_order(tmp_path):
    # Landscape 16x24 frames: three 16-wide crops at x = 0, 4, 8.
    wvr.write_video_records(make_videos([10], width=24), str(tmp_path / "train"))
    wvr.write_video_records(make_videos([10, 4, 13], width=24), str(tmp_path / "eval"))
    ds = build(tmp_path, num_frames=2, stride=3, num_test_clips=3, num_test_crops=3)
    batches = list(ds.multiview_eval_batches())
    assert len(batches) == ds.num_eval_batches == 1
    batch = batches[0]
    assert batch["inputs"].shape == (4, 9, 2, 16, 16, 3)
    np.testing.assert_array_equal(batch["batch_mask"], [1, 1, 1, 0])
    assert ds.meta_data["num_test_views"] == 9
    for v, n in enumerate([10, 4, 13]):
        max_start = max(n - 4, 0)
        starts = np.round(np.linspace(0, max_start, 3)).astype(int)
        for c, start in enumerate(starts):
            indices = reference_indices(n, 2, 3, start)
            frames = np.stack([frame_pixels(v, t, width=24) for t in indices]) / 127.5 - 1.0
            for s, x in enumerate((0, 4, 8)):
                view = batch["inputs"][v, c * 3 + s]
                np.testing.assert_allclose(view, frames[:, :, x : x + 16], atol=TOL)
    np.testing.assert_array_equal(batch["inputs"][3], 0.0)


def test_two_host_eval_counts_every_video_once(tmp_path):
    wvr.write_video_records(make_videos([4]), str(tmp_path / "train"))
    ids = [f"vid{v}" for v in range(7)]
    wvr.write_video_records(make_videos([4, 5, 6, 7, 5, 4, 6]), str(tmp_path / "eval"), 3)
    seen, counts = [], []
    for p in (0, 1):
        ds = build(tmp_path, process_index=p, process_count=2, with_video_id=True)
        for view in (ds.eval_batches, ds.multiview_eval_batches):
            batches = list(view())
            counts.append(len(batches))
            for b in batches:
                assert b["inputs"].shape[0] == 2
                if view == ds.eval_batches:
                    seen += [i.decode() for i, m in zip(b["video_id"], b["batch_mask"]) if m]
                else:
                    assert {i for i, m in zip(b["video_id"], b["batch_mask"]) if not m} <= {b""}
    assert counts == [2, 2, 2, 2]  # hosts hold 3 and 4 videos: 2 batches of 2 each
    assert sorted(seen) == sorted(ids)


def test_multi_label_records_give_multi_hot_labels(tmp_path):
    videos = make_videos([4, 5], labels=[[1, 3], [4]])
    wvr.write_video_records(videos, str(tmp_path / "train"))
    wvr.write_video_records(videos, str(tmp_path / "eval"))
    batch = next(build(tmp_path, multi_label=True, batch_size=2).train_batches(0))
    assert batch["label"].shape == (2, 5) and batch["label"].dtype == np.float32
    rows = {tuple(np.flatnonzero(row)) for row in batch["label"]}
    assert rows <= {(1, 3), (4,)}
    eval_labels = next(build(tmp_path, multi_label=True, eval_batch_size=4).eval_batches())["label"]
    np.testing.assert_array_equal(eval_labels[:2].nonzero()[1], [1, 3, 4])
    np.testing.assert_array_equal(eval_labels[2:], 0)


def damaged_copies(tmp_path):
    wvr.write_video_records(make_videos([4, 5, 6]), str(tmp_path / "good"))
    data = (tmp_path / "good").read_bytes()
    (tmp_path / "truncated").write_bytes(data[:-10])
    flipped = bytearray(data)
    flipped[40] ^= 0xFF  # inside the first record's payload
    (tmp_path / "corrupt").write_bytes(bytes(flipped))
    header = bytearray(data)
    header[3] ^= 0x01  # the first record's length
    (tmp_path / "bad_header").write_bytes(bytes(header))


@pytest.mark.parametrize(
    "name, in_memory",
    [
        ("truncated", True),
        ("truncated", False),
        ("corrupt", True),
        ("bad_header", True),
        ("bad_header", False),
    ],
)
def test_damaged_files_raise_errors_naming_the_file(tmp_path, name, in_memory):
    damaged_copies(tmp_path)
    path = str(tmp_path / name)
    with pytest.raises(video_dataset.CorruptRecordsError, match=path):
        build(tmp_path, train_files=path, eval_files=str(tmp_path / "good"), in_memory=in_memory)


def test_records_not_in_the_layout_raise_errors_naming_file_and_video(tmp_path):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(tmp_path / "garbage")) as w:
        w.write(b"\xff\xff not a proto")
    wvr.write_video_records(make_videos([4], labels=[[7]]), str(tmp_path / "bad_label"))
    good = str(tmp_path / "bad_label")
    for in_memory in (True, False):
        with pytest.raises(video_dataset.CorruptRecordsError, match=r"garbage.*SequenceExample"):
            ds = build(
                tmp_path,
                train_files=str(tmp_path / "garbage"),
                eval_files=good,
                in_memory=in_memory,
                num_classes=8,
            )
            next(ds.train_batches(0))
        with pytest.raises(video_dataset.CorruptRecordsError, match=r"bad_label.*vid0.*\[0, 5\)"):
            ds = build(tmp_path, train_files=good, eval_files=good, in_memory=in_memory)
            next(ds.train_batches(0))
    with pytest.raises(FileNotFoundError, match="train_files pattern"):
        build(tmp_path, train_files=str(tmp_path / "nothing*"))


@pytest.mark.parametrize(
    "kwargs, name, value",
    [
        (dict(num_frames=0), "num_frames", 0),
        (dict(stride=-1), "stride", -1),
        (dict(image_size=0), "image_size", 0),
        (dict(num_test_clips=0), "num_test_clips", 0),
        (dict(channels=2), "channels", 2),
        (dict(train_crop="centre"), "train_crop", "'centre'"),
        (dict(num_test_crops=2), "num_test_crops", 2),
        (dict(resize_size=12), "resize_size", 12),
        (dict(num_classes=0), "num_classes", 0),
        (dict(batch_size=0), "batch_size", 0),
        (dict(eval_batch_size=0), "eval_batch_size", 0),
        (dict(batch_size=3, process_count=2), "batch_size", 3),
        (dict(eval_batch_size=3, process_count=2), "eval_batch_size", 3),
        (dict(decode_once=True, in_memory=False), "in_memory", False),
        (dict(shift_pixels=-1), "shift_pixels", -1),
    ],
)
def test_each_bad_argument_is_named_before_any_file_is_read(tmp_path, kwargs, name, value):
    with pytest.raises(FileNotFoundError):  # control: good arguments go on to read the files
        build(tmp_path / "no_such_folder")
    with pytest.raises(ValueError, match=rf"\b{name}\b.*(got |=).*{re.escape(str(value))}"):
        build(tmp_path / "no_such_folder", **kwargs)


def test_masked_crc32c_matches_the_tfrecord_header(records):
    data = (records / "eval").read_bytes()
    assert int.from_bytes(data[8:12], "little") == record_io.masked_crc32c(data[:8])


# --- the writer tool ---------------------------------------------------------------------------


def test_writer_cli_from_frame_folders(tmp_path):
    import tensorflow as tf

    source = tmp_path / "videos"
    for v, n in enumerate([3, 5]):
        folder = source / f"clip{v}"
        folder.mkdir(parents=True)
        for t in range(n):
            frame = frame_pixels(v, t)
            if t == 1:  # a PNG among JPEGs is re-encoded
                data = tf.io.encode_png(frame).numpy()
                (folder / f"frame_{t:04d}.png").write_bytes(data)
            else:
                (folder / f"frame_{t:04d}.jpg").write_bytes(tf.io.encode_jpeg(frame).numpy())
    (tmp_path / "labels.csv").write_text("clip0,run\nclip1,jump;run\n")
    out = tmp_path / "out" / "rec"
    assert (
        wvr.main(
            [
                "--input",
                str(source),
                "--output",
                str(out),
                "--labels",
                str(tmp_path / "labels.csv"),
                "--num-shards",
                "2",
            ]
        )
        == 0
    )
    assert (tmp_path / "out" / "rec.classes.txt").read_text() == "jump\nrun\n"
    assert sorted(os.listdir(tmp_path / "out"))[:2] == ["rec-00000-of-00002", "rec-00001-of-00002"]
    ds = build(
        tmp_path,
        train_files=str(out) + "-*",
        eval_files=str(out) + "-*",
        multi_label=True,
        num_classes=2,
        num_frames=5,
        stride=1,
        with_video_id=True,
    )
    batch = next(ds.eval_batches())
    assert list(batch["video_id"][:2]) == [b"clip0", b"clip1"]
    np.testing.assert_array_equal(batch["label"][:2], [[0, 1], [1, 1]])
    np.testing.assert_array_equal(frame_index(batch["inputs"][1]), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(frame_index(batch["inputs"][0]), [0, 1, 2, 0, 1])


def test_writer_rejects_bad_input(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="uint8"):
        wvr.encode_frames(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="no frames"):
        wvr.sequence_example("v", [], 0)
    (tmp_path / "labels.csv").write_text("a,1\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "b.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="No label for 1 videos"):
        wvr.main(
            [
                "--input",
                str(tmp_path / "in"),
                "--output",
                str(tmp_path / "o"),
                "--labels",
                str(tmp_path / "labels.csv"),
            ]
        )
    for module in ("av", "imageio", "imageio.v3"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match="pip install av"):
        wvr.decode_video_file(tmp_path / "in" / "b.mp4")


def test_writer_reads_video_files_with_pyav(tmp_path):
    av = pytest.importorskip("av")
    (tmp_path / "in").mkdir()
    with av.open(str(tmp_path / "in" / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for t in range(6):
            frame = np.full((32, 32, 3), 30 * t, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = wvr.decode_video_file(tmp_path / "in" / "clip.mp4")
    assert frames.shape == (6, 32, 32, 3)
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), 30 * np.arange(6), atol=6)


# --- moving digits -------------------------------------------------------------------------------


def test_render_matches_a_numpy_roll_reference():
    rng = np.random.default_rng(0)
    images = rng.random((12, 8, 8))
    starts = rng.integers(0, 16, (12, 2))
    directions = np.arange(12) % 4
    frames, positions = moving_digits.render(images, starts, directions, speed=2)
    assert frames.shape == (12, 8, 16, 16) and frames.dtype == np.uint8
    for k in range(12):
        canvas = np.zeros((16, 16), np.uint8)
        canvas[:8, :8] = np.round(images[k] * 255)
        dy, dx = moving_digits.DIRECTIONS[directions[k]]
        for t in range(8):
            shift = (starts[k, 0] + 2 * t * dy, starts[k, 1] + 2 * t * dx)
            np.testing.assert_array_equal(frames[k, t], np.roll(canvas, shift, axis=(0, 1)))
            np.testing.assert_array_equal(positions[k, t], np.mod(shift, 16))


def test_single_frames_do_not_reveal_the_direction():
    train_x, train_y, test_x, test_y = moving_digits.load_digit_split()
    for images, digits in ((train_x, train_y), (test_x, test_y)):
        _, labels, positions, image_index, directions = moving_digits.generate_split(
            images, digits, clips_per_image=1, speed=1, seed=3
        )
        for d in range(4):  # the same digit images in every direction
            np.testing.assert_array_equal(image_index[directions == d], np.arange(len(images)))
        for t in range(8):
            cells = positions[:, t, 0] * 16 + positions[:, t, 1]
            hists = np.stack([np.bincount(cells[directions == d], minlength=256) for d in range(4)])
            # Each direction's frame-t positions are uniform over the 256 cells (+-1 count).
            assert hists.max() - hists.min() <= 1, (t, hists.min(), hists.max())
        counts = np.bincount(labels, minlength=40)
        assert counts.min() >= 0.9 * counts.mean()
    train_set = {x.tobytes() for x in train_x}
    assert not train_set & {x.tobytes() for x in test_x}


def test_generation_is_deterministic():
    train_x, train_y, _, _ = moving_digits.load_digit_split()
    a = moving_digits.generate_split(train_x[:50], train_y[:50], 2, 1, seed=1)
    b = moving_digits.generate_split(train_x[:50], train_y[:50], 2, 1, seed=1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    frames = a[0][:3].reshape(-1, 16, 16, 1)
    assert wvr.encode_frames(frames) == wvr.encode_frames(frames)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("moving_digits")


def test_moving_digits_written_once_and_read_back(digits_dir):
    ds = moving_digits.build_moving_digits(
        batch_size=32, eval_batch_size=256, seed=0, data_dir=str(digits_dir), with_video_id=True
    )
    folder = ds.meta_data["data_dir"]
    assert folder.startswith(str(digits_dir)) and moving_digits.VERSION in folder
    assert ds.meta_data["num_classes"] == 40
    assert ds.meta_data["input_shape"] == (-1, 8, 16, 16, 1)
    assert (ds.meta_data["num_train_examples"], ds.meta_data["num_eval_examples"]) == (5748, 1440)
    mtime = os.path.getmtime(os.path.join(folder, "train.tfrecord"))
    assert moving_digits.prepare(str(digits_dir)) == folder  # cached: not written again
    assert os.path.getmtime(os.path.join(folder, "train.tfrecord")) == mtime
    assert [p for p in os.listdir(os.path.dirname(folder)) if p.startswith(".tmp")] == []

    batch = next(ds.train_batches(0))
    assert batch["inputs"].shape == (32, 8, 16, 16, 1) and batch["label"].max() < 40
    # Eval videos come back in written order and match the generator within JPEG error.
    _, _, test_x, test_y = moving_digits.load_digit_split()
    frames, labels, _, _, _ = moving_digits.generate_split(test_x, test_y, 1, 1, seed=2)
    eval_batch = next(ds.eval_batches())
    np.testing.assert_array_equal(eval_batch["label"], labels[:256])
    error = np.abs(eval_batch["inputs"][..., 0] - (frames[:256] / 127.5 - 1.0))
    assert error.mean() < 0.01 and error.max() < 24 / 127.5  # JPEG ringing at digit edges
    assert eval_batch["video_id"][0].startswith(b"test-0000-0")


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(moving_digits, "write_split", fail)
    with pytest.raises(KeyboardInterrupt):
        moving_digits.prepare(str(tmp_path), train_clips_per_image=2)
    assert os.listdir(tmp_path / moving_digits.VERSION) == []
