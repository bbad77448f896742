"""The demo through the `scenic-mbt` CLI at tiny sizes: train (modality dropout, class
tokens, mixup, multi-view test), eval, and predict on records and on video files, checked
against the model run directly on the reader's batches; bad inputs are one-line errors."""

import functools
import json

import numpy as np

from scenic.dataset_lib import audiovisual_dataset, audiovisual_digits, write_video_records
from scenic_mbt import predict
from scenic_mbt.cli import main

TINY = [
    "--config.model.hidden_size=16",
    "--config.model.num_heads=2",
    "--config.model.mlp_dim=32",
    "--config.model.num_layers=2",
    "--config.model.fusion_layer=1",
    "--config.model.classifier=token",
    "--config.model.modality_dropout=0.5",
    "--config.mixup.mixup_alpha=0.5",
    "--config.label_smoothing=0.0",
    "--config.multiview_test=True",
    "--config.dataset_configs.num_test_clips=2",
    "--config.batch_size=16",
    "--config.eval_batch_size=90",
    "--config.num_training_steps=3",
    "--config.log_summary_steps=1",
    "--config.log_eval_steps=3",
    "--config.checkpoint_steps=3",
    "--config.lr_configs.warmup_steps=1",
    "--config.lr_configs.base_learning_rate=0.05",
]


def train_demo(root):
    data_dir = str(root / "data")
    workdir = root / "run"
    argv = ["train", "--config", "mbt_audiovisual_digits", "--workdir", str(workdir), *TINY]
    assert main([*argv, f"--config.dataset_configs.data_dir={data_dir}"]) == 0
    return workdir, audiovisual_digits.prepare(data_dir)


def test_train_eval_and_predict(tmp_path, capsys):
    """One tiny run (training is the costly part) serves every check below."""
    run = train_demo(tmp_path)
    check_train_and_eval(run)
    capsys.readouterr()  # training's and eval's own lines
    check_predict_on_records(run, tmp_path, capsys)
    check_predict_on_video_files(run, tmp_path, capsys)
    check_predict_names_a_silent_or_unknown_file(run, tmp_path, capsys)


def check_train_and_eval(run):
    """Fused and single-modality metrics in training's final eval; `eval` agrees."""
    workdir, _ = run
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 3
    for prefix in ("", "rgb_only_", "spectrogram_only_", "multiview_", "multiview_rgb_only_"):
        assert 0.0 <= final[f"{prefix}accuracy"] <= 1.0, prefix
    assert main(["eval", "--workdir", str(workdir)]) == 0
    evaluated = json.loads((workdir / "eval_metrics.json").read_text())
    for key in ("loss", "spectrogram_only_loss", "rgb_only_accuracy"):
        np.testing.assert_allclose(evaluated[key], final[key], rtol=1e-5)


@functools.cache
def load_trained(workdir):
    from scenic.train_lib import trained_model
    from scenic_mbt.models import MODELS

    config, _ = predict_config(workdir)
    return trained_model.load_trained_model(MODELS[config.model_name], config, workdir)


@functools.cache
def expected_scores(workdir, records):
    """Softmax of the averaged multi-view logits (the run's clips), straight from the reader
    and the model, for every video of `records`."""
    files, num_clips = [records], None
    from scenic.train_lib import trainer

    trained = load_trained(workdir)
    meta = trainer.load_meta_data(workdir)
    arguments = predict.reader_arguments(meta["eval_pipeline"], "waveform", num_clips)
    ds = audiovisual_dataset.build_audiovisual_tfrecord(
        batch_size=1, eval_batch_size=64, seed=0, train_files=files, eval_files=files,
        num_classes=10, spec_augment=False, with_video_id=True, **arguments,
    )  # fmt: skip
    scores = {}
    for batch in ds.multiview_eval_batches():
        flat = {m: x.reshape(-1, *x.shape[2:]) for m, x in batch["inputs"].items()}
        views = batch["inputs"]["rgb"].shape[1]
        logits = np.asarray(trained(flat)["logits"]).reshape(-1, views, 10).mean(1)
        for k in np.flatnonzero(batch["batch_mask"]):
            e = np.exp(logits[k] - logits[k].max())
            scores[batch["video_id"][k].decode()] = e / e.sum()
    return scores


def predict_config(workdir):
    from scenic.common_lib import runner
    from scenic_mbt.models import MODELS

    return runner.resolve_config(runner.read_config(None, workdir, "scenic_mbt.configs"), MODELS)


def check_predict_on_records(run, tmp_path, capsys):
    """predict on records is the model on the reader's multi-view batches."""
    workdir, data = run
    records = f"{data}/test.tfrecord"
    out = tmp_path / "predictions.json"
    argv = ["predict", "--workdir", str(workdir), records, "--top-k", "3"]  # the run's 2 clips
    assert main([*argv, "--output", str(out)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    written = json.loads(out.read_text())
    assert printed == written and len(written) == 360
    expected = expected_scores(workdir, records)
    for result in written[::37]:
        scores = expected[result["video_id"]]
        top = np.argsort(-scores, kind="stable")[:3]
        assert [c["class"] for c in result["top_k"]] == top.tolist()
        np.testing.assert_allclose([c["score"] for c in result["top_k"]], scores[top], rtol=1e-5)


def lossless_video(path, frames, waveform, rate):
    """frames uint8 [T, H, W] gray, waveform float [N] at `rate` Hz: FFV1 + 32-bit PCM."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("ffv1", rate=4)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        audio = container.add_stream("pcm_f32le", rate=rate, layout="mono")
        for frame in frames:
            rgb = np.repeat(frame[..., None], 3, axis=-1)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        sound = av.AudioFrame.from_ndarray(
            waveform[None].astype(np.float32), format="fltp", layout="mono"
        )
        sound.sample_rate, sound.pts = rate, 0
        for packet in [*audio.encode(sound), *audio.encode()]:
            container.mux(packet)
    return path


def check_predict_on_video_files(run, tmp_path, capsys):
    """A test clip saved as a video file with its sound track gets the record's prediction
    (the frames pass through JPEG once more, so scores agree to a small tolerance)."""
    workdir, data = run
    _, _, test_x, test_y = audiovisual_digits.load_digit_split()
    frames, waveforms, _ = audiovisual_digits.generate_split(test_x, test_y, seed=2)
    videos = []
    for k in (0, 5):
        path = tmp_path / f"clip{k}.mkv"
        videos.append(lossless_video(path, frames[k], waveforms[k], audiovisual_digits.SAMPLE_RATE))
    assert main(["predict", "--workdir", str(workdir), *map(str, videos), "--top-k", "10"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in results] == [str(v) for v in videos]
    expected = expected_scores(workdir, f"{data}/test.tfrecord")
    for k, result in zip((0, 5), results):
        record_id = next(v for v in expected if v.startswith(f"test-{k:04d}-"))
        got = np.zeros(10)
        for c in result["top_k"]:
            got[c["class"]] = c["score"]
        np.testing.assert_allclose(got, expected[record_id], atol=2e-3)
    # The decoded sound track is the waveform the record holds (lossless, same rate).
    decoded = write_video_records.decode_audio_track(videos[0], audiovisual_digits.SAMPLE_RATE)
    np.testing.assert_allclose(decoded[: len(waveforms[0])], waveforms[0], atol=1e-6)


def check_predict_names_a_silent_or_unknown_file(run, tmp_path, capsys):
    import av

    workdir, _ = run
    silent = tmp_path / "silent.mkv"
    with av.open(str(silent), "w") as container:
        stream = container.add_stream("ffv1", rate=4)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "bgr0"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8))):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert main(["predict", "--workdir", str(workdir), str(silent)]) == 2
    error = capsys.readouterr().err.strip()
    assert "silent.mkv" in error and "no audio stream" in error and len(error.splitlines()) == 1
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["predict", "--workdir", str(workdir), str(notes)]) == 2
    assert "notes.txt: not a video file" in capsys.readouterr().err
    assert predict.split_inputs([str(silent)]) == ([silent], [])
