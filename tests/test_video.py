"""Clips: tracks, one identity per person, every frame rendered, timing and audio kept (falco.video)."""

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from falco import cli
from falco.config import OptimConfig, VideoConfig
from falco.errors import FalcoError, InputVideoError, NoFaceError
from falco.faces import ffhq_quad
from falco.ui import video_tab
from falco.video.anonymize import VideoProgress, VideoResult, anonymize_video
from falco.video.io import VideoWriter, probe_video, read_frames
from falco.video.render import FrameRenderer
from falco.video.smoothing import OneEuroFilter, fill_gaps, smooth_track
from falco.video.synthetic import pan_zoom_frames, write_clip
from falco.video.tracks import FaceTracker, iou

FRAMES, FPS, SIZE = 12, 12, (256, 256)
OPTIM = OptimConfig(steps=2, preview_every=1)


@pytest.fixture(scope="module")
def frames(astronaut):
    return pan_zoom_frames(Image.open(astronaut), FRAMES, SIZE)


@pytest.fixture(scope="module")
def clip(frames, tmp_path_factory) -> Path:
    """Lossless (FFV1 RGB, FLAC) so that pixels compare exactly."""
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mkv", frames, fps=FPS)


@pytest.fixture(scope="module")
def run(tiny_pipeline, clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "anonymized.mkv"
    events = list(anonymize_video(tiny_pipeline, clip, out, margin=0.0, optim=OPTIM))
    return events, out


def outside_face(landmarks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The pixels of a frame of ``shape`` that lie outside the face's FFHQ crop (the paste-back leaves them be)."""
    quad = ffhq_quad(landmarks)
    x0, y0 = np.floor(quad.min(0)).astype(int) - 1
    x1, y1 = np.ceil(quad.max(0)).astype(int) + 2
    outside = np.ones(shape[:2], bool)
    outside[max(y0, 0):y1, max(x0, 0):x1] = False
    assert outside.any()
    return outside


def portrait(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The square frames as a portrait clip's (taller than wide), grey bands above and below."""
    return [np.pad(f, ((32, 32), (0, 0), (0, 0)), constant_values=90) for f in frames]


def audio_samples(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(frame.samples for frame in container.decode(audio=0))


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(audio=0) if p.size]


def test_events_then_the_result(run):
    events, out = run
    *progress, result = events
    assert isinstance(result, VideoResult) and all(isinstance(e, VideoProgress) for e in progress)
    stages = [e.stage for e in progress]
    assert stages == sorted(stages, key=["tracking", "identity", "rendering"].index)   # in stage order
    assert [e.done for e in progress if e.stage == "tracking"] == list(range(1, FRAMES + 1))
    identity = [e for e in progress if e.stage == "identity"]
    assert [e.done for e in identity] == [1, 2] and all(e.track == 1 and e.step.previews for e in identity)
    assert progress[-1].stage == "rendering" and progress[-1].done == progress[-1].total == FRAMES
    assert result.path == out and out.is_file()


def test_frame_count_rate_size_and_audio_are_kept(run, clip):
    _, out = run
    source, written = probe_video(clip), probe_video(out)
    assert (written.frames, written.fps, written.width, written.height) == (FRAMES, FPS, *SIZE)
    assert written.codec == source.codec == "ffv1" and written.audio_codec == "flac"
    assert audio_samples(out) == audio_samples(clip) == 16000 * FRAMES // FPS
    assert audio_packets(out) == audio_packets(clip)   # copied, not re-encoded
    assert [f.pts for f in read_frames(out)] == [f.pts for f in read_frames(clip)]


def test_one_track_for_the_one_face(run):
    result = run[0][-1]
    assert len(result.tracks) == 1
    track = result.tracks[0]
    assert track.frames == list(range(FRAMES)) and sorted(track.landmarks) == track.frames
    assert track.record()["frames"] == FRAMES and 0 <= track.key_frame < FRAMES


def test_pixels_away_from_the_face_are_unchanged(run, frames):
    result, out = run[0][-1], run[1]
    changed_frames = 0
    for frame, original in zip(read_frames(out), frames):
        outside = outside_face(result.tracks[0].landmarks[frame.index], original.shape)
        assert np.array_equal(frame.pixels[outside], original[outside])
        changed_frames += not np.array_equal(frame.pixels, original)
    assert changed_frames == FRAMES


def test_the_offset_lives_in_rows_3_to_7_only(run, tiny_pipeline, frames):
    result = run[0][-1]
    track = result.tracks[0]
    start, stop = OPTIM.trained_rows
    assert not track.offset[:start].any() and not track.offset[stop:].any() and track.offset[start:stop].any()
    torch.testing.assert_close(track.offset[start:stop], track.face.wplus[start:stop]
                               - track.face.wplus_inversion[start:stop])
    renderer = FrameRenderer(tiny_pipeline, result.tracks, result.margins, OPTIM, VideoConfig())
    frame = next(iter(read_frames(run[1])))
    crops = [item.aligned.image for item in renderer.align(frame, {0: track.landmarks[frame.index]}).items]
    inversion = tiny_pipeline.invert(crops)
    (codes,) = renderer.codes(inversion, [0])   # the one m's
    assert torch.equal(codes[:, :start], inversion[:, :start]) and torch.equal(codes[:, stop:], inversion[:, stop:])
    torch.testing.assert_close(codes[:, start:stop] - inversion[:, start:stop],
                               track.offset[None, start:stop].to(codes))


def test_refinement_moves_rows_3_to_7_only(run, tiny_pipeline):
    result = run[0][-1]
    renderer = FrameRenderer(tiny_pipeline, result.tracks, result.margins, OPTIM, VideoConfig(), refine_steps=1)
    frame = next(iter(read_frames(run[1])))
    crops = [item.aligned.image for item in renderer.align(frame, {0: result.tracks[0].landmarks[frame.index]}).items]
    start, stop = OPTIM.trained_rows
    (codes,) = renderer.codes(tiny_pipeline.invert(crops), [0])
    refined = tiny_pipeline.refine(crops, codes, renderer.fake_w[[0]], torch.tensor(result.margins),
                                   replace(OPTIM, steps=1), renderer.loss)
    assert torch.equal(refined[:, :start], codes[:, :start]) and torch.equal(refined[:, stop:], codes[:, stop:])
    assert not torch.equal(refined[:, start:stop], codes[:, start:stop])


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_a_rotated_clip_is_read_upright(frames, tmp_path, rotation):
    upright = portrait(frames[:2])
    clip = write_clip(tmp_path / "phone.mkv", upright, fps=FPS, rotation=rotation, audio_hz=None)
    with av.open(str(clip)) as container:   # stored turned, with a display matrix that turns it back
        stored = next(container.decode(video=0))
        assert stored.rotation % 360 == rotation % 360   # 180 reads back as -180
        assert np.array_equal(stored.to_ndarray(format="rgb24"), np.rot90(upright[0], -rotation // 90))
    info = probe_video(clip)
    assert (info.width, info.height, info.rotation) == (SIZE[0], SIZE[1] + 64, rotation)
    read = [frame.pixels for frame in read_frames(clip)]
    assert len(read) == len(upright) and all(np.array_equal(a, b) for a, b in zip(read, upright))


@pytest.mark.slow
def test_a_phone_clip_is_anonymized_upright(tiny_pipeline, frames, tmp_path):
    """A portrait phone clip (stored sideways, rotation -90): the face is found, and the output shows as the input."""
    upright = portrait(frames[:4])
    clip = write_clip(tmp_path / "phone.mkv", upright, fps=FPS, rotation=-90)
    out = tmp_path / "out.mkv"
    result = list(anonymize_video(tiny_pipeline, clip, out, margin=0.0, optim=OPTIM))[-1]
    assert len(result.tracks) == 1 and result.tracks[0].frames == [0, 1, 2, 3]
    record = result.video_record()
    assert (record["width"], record["height"], record["rotation"]) == (SIZE[0], SIZE[1] + 64, -90)
    # As players show it: the stored frames turned by the output's own display matrix (if any).
    with av.open(str(out)) as container:
        shown = [np.rot90(f.to_ndarray(format="rgb24"), round(f.rotation / 90)) for f in container.decode(video=0)]
    assert len(shown) == len(upright)
    for index, (pixels, original) in enumerate(zip(shown, upright)):
        assert pixels.shape == original.shape
        outside = outside_face(result.tracks[0].landmarks[index], original.shape)
        assert np.array_equal(pixels[outside], original[outside]) and not np.array_equal(pixels, original)


def test_a_clip_without_a_face(tiny_pipeline, tmp_path):
    clip = write_clip(tmp_path / "grey.mkv", [np.full((64, 64, 3), 128, np.uint8)] * 3)
    out = tmp_path / "out.mkv"
    with pytest.raises(NoFaceError, match="any frame of the clip"):
        list(anonymize_video(tiny_pipeline, clip, out, optim=OPTIM))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey.mkv"]


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_a_damaged_file(tiny_pipeline, frames, tmp_path, damage):
    # An MP4 keeps its index at the end: cut short, it cannot be read (a cut Matroska file is a shorter clip).
    whole = write_clip(tmp_path / "whole.mp4", frames[:4], codec="libx264", pix_fmt="yuv420p", audio_codec="aac")
    data = whole.read_bytes()
    whole.unlink()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes({"garbage": b"not a clip at all" * 100, "empty": b"", "truncated": data[:len(data) // 2]}[damage])
    with pytest.raises(InputVideoError) as err:
        list(anonymize_video(tiny_pipeline, bad, tmp_path / "out.mp4", optim=OPTIM))
    assert str(tmp_path) not in str(err.value)   # no server path in the message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]


def test_a_clip_over_the_limit(tiny_pipeline, clip, tmp_path):
    with pytest.raises(InputVideoError, match=r"lasts 1\.0 s; at most 0\.5 s"):
        list(anonymize_video(tiny_pipeline, clip, tmp_path / "out.mkv", optim=OPTIM, max_seconds=0.5))
    with pytest.raises(InputVideoError, match="at most 0.5 s"):
        list(anonymize_video(tiny_pipeline, clip, tmp_path / "out.mkv", optim=OPTIM,
                             config=replace(VideoConfig(), max_seconds=0.5)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_stopping_midway_leaves_nothing(tiny_pipeline, clip, tmp_path):
    events = anonymize_video(tiny_pipeline, clip, tmp_path / "out.mkv", optim=OPTIM)
    for event in events:
        if event.stage == "rendering":
            break
    events.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_person_who_returns_rejoins_their_track(tiny_pipeline, frames):
    blank = np.full_like(frames[0], 90)
    clip_frames = [frames[0], frames[1], blank, blank, frames[4], frames[5]]
    tracker = FaceTracker(tiny_pipeline.analyzer, tiny_pipeline.recognizer, replace(VideoConfig(), track_gap=1))
    for i, pixels in enumerate(clip_frames):
        tracker.update(i, Image.fromarray(pixels))
    assert len(tracker.tracks) == 1 and sorted(tracker.tracks[0].faces) == [0, 1, 4, 5]
    strict = FaceTracker(tiny_pipeline.analyzer, tiny_pipeline.recognizer,
                         replace(VideoConfig(), track_gap=1, rejoin_distance=0.0))
    for i, pixels in enumerate(clip_frames):
        strict.update(i, Image.fromarray(pixels))
    assert [sorted(t.faces) for t in strict.tracks] == [[0, 1], [4, 5]]


def test_followed_between_detections(tiny_pipeline, frames):
    tracker = FaceTracker(tiny_pipeline.analyzer, tiny_pipeline.recognizer, replace(VideoConfig(), detect_every=3))
    for i, pixels in enumerate(frames[:6]):
        tracker.update(i, Image.fromarray(pixels))
    assert len(tracker.tracks) == 1 and sorted(tracker.tracks[0].faces) == list(range(6))


def test_iou():
    assert iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert iou((0, 0, 9, 9), (10, 0, 19, 9)) == 0.0
    assert iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)


def test_one_euro_filter():
    still = np.array([[3.0, 4.0], [5.0, 6.0]])
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    assert all(np.allclose(f(still, t / 30), still, rtol=1e-12, atol=0) for t in range(5))   # at rest, no move
    f.reset()
    f(np.zeros(2), 0.0)
    moved = f(np.ones(2), 1 / 30)
    assert (0 < moved).all() and (moved < 1).all()   # between the last output and the new sample
    # A missing frame restarts the filter: the first sample after it comes out as it went in.
    smoothed = smooth_track({0: np.zeros(2), 1: np.ones(2), 3: np.full(2, 5.0)}, 30.0, 1.0, 0.0, 1.0)
    assert np.array_equal(smoothed[3], np.full(2, 5.0)) and np.array_equal(smoothed[0], np.zeros(2))


def miss_the_face_in(monkeypatch, analyzer, missed: np.ndarray) -> None:
    """The detector finds nothing in the frame whose pixels are ``missed`` (a blink), as it does elsewhere."""
    detect = analyzer.detect
    monkeypatch.setattr(analyzer, "detect", lambda photo: [] if np.array_equal(np.asarray(photo), missed)
                        else detect(photo))


def test_fill_gaps_interpolates_between_the_detections_either_side():
    landmarks = {0: np.zeros((2, 2)), 3: np.full((2, 2), 3.0), 4: np.full((2, 2), 4.0), 9: np.full((2, 2), 9.0)}
    filled = fill_gaps(landmarks, max_gap=3)
    assert list(filled) == [0, 1, 2, 3, 4, 9]   # 4 -> 9 is more than 3 frames: not bridged
    assert np.array_equal(filled[1], np.ones((2, 2))) and np.array_equal(filled[2], np.full((2, 2), 2.0))
    assert all(filled[i] is landmarks[i] for i in landmarks)   # detections as they were
    assert list(fill_gaps(landmarks, max_gap=5)) == list(range(10))
    assert np.array_equal(fill_gaps(landmarks, max_gap=5)[6], np.full((2, 2), 6.0))


@pytest.mark.slow
def test_a_frame_where_the_face_is_missed_is_anonymized_all_the_same(tiny_pipeline, frames, tmp_path, monkeypatch):
    """A blink: no detection in one middle frame; that frame still gets the new face, not the original one."""
    missed = 2
    clip = write_clip(tmp_path / "blink.mkv", frames[:5], fps=FPS, audio_hz=None)
    miss_the_face_in(monkeypatch, tiny_pipeline.analyzer, frames[missed])
    out = tmp_path / "out.mkv"
    result = list(anonymize_video(tiny_pipeline, clip, out, margin=0.0, optim=OPTIM))[-1]
    written = [f.pixels for f in read_frames(out)]
    assert not np.array_equal(written[missed], frames[missed])
    (track,) = result.tracks
    assert track.frames == list(range(5)) and track.filled_frames == [missed]
    assert track.record()["filled_frames"] == 1 and track.record()["frames"] == 5
    outside = outside_face(track.landmarks[missed], frames[missed].shape)
    assert np.array_equal(written[missed][outside], frames[missed][outside])
    assert not np.array_equal(written[missed][~outside], frames[missed][~outside])   # the face itself changed


def counting(counts: Counter, name: str, work):
    def counted(*args, **kwargs):
        counts[name] += 1
        return work(*args, **kwargs)
    return counted


@pytest.mark.slow
def test_a_clip_at_two_m_is_tracked_once_and_each_person_optimised_once(tiny_pipeline, frames, tmp_path,
                                                                         monkeypatch):
    """Two m: one decode and one detection per frame to track, one optimisation for both m, one decode to render
    both clips; each m's clip is the one a run at that m alone writes."""
    import falco.pipeline
    from falco.video import anonymize, render
    clip = write_clip(tmp_path / "clip.mkv", frames[:3], fps=FPS, audio_hz=None)
    alone = list(anonymize_video(tiny_pipeline, clip, tmp_path / "alone.mkv", margin=0.5, optim=OPTIM))[-1]
    counts = Counter()
    monkeypatch.setattr(anonymize, "read_frames", counting(counts, "tracking decodes", anonymize.read_frames))
    monkeypatch.setattr(render, "read_frames", counting(counts, "rendering decodes", render.read_frames))
    monkeypatch.setattr(tiny_pipeline.analyzer, "detect", counting(counts, "detections", tiny_pipeline.analyzer.detect))
    monkeypatch.setattr(falco.pipeline, "optimize_latents",
                        counting(counts, "optimisations", falco.pipeline.optimize_latents))
    paths = [tmp_path / "m0.mkv", tmp_path / "m0.5.mkv"]
    *progress, result = anonymize_video(tiny_pipeline, clip, paths, margins=(0.0, 0.5), optim=OPTIM)
    assert counts == {"tracking decodes": 1, "detections": 3, "optimisations": 1, "rendering decodes": 1}
    assert [e.done for e in progress if e.stage == "tracking"] == [1, 2, 3]
    assert [e.done for e in progress if e.stage == "identity"] == [1, 2]   # the steps of the one optimisation
    # One m per result: each track entry its own, the run's margins once, none in the optimisation's settings.
    assert result.paths == paths and result.margins == (0.0, 0.5) and result.persons == 1
    assert [(t["track"], t["margin"]) for t in result.track_records()] == [(1, 0.0), (1, 0.5)]
    assert result.params["margins"] == [0.0, 0.5] and "margin" not in result.params["optim"]
    assert result.tracks[0].landmarks is result.tracks[1].landmarks   # tracked once
    written = {path.name: [f.pixels for f in read_frames(path)] for path in (*paths, alone.path)}
    assert all(np.array_equal(a, b) for a, b in zip(written["m0.5.mkv"], written["alone.mkv"]))
    assert not all(np.array_equal(a, b) for a, b in zip(written["m0.mkv"], written["m0.5.mkv"]))
    assert torch.equal(result.tracks[1].offset, alone.tracks[0].offset)   # the very identity of a run at 0.5


def test_one_output_path_per_m(tiny_pipeline, clip, tmp_path):
    with pytest.raises(FalcoError, match="2 value.* of m need as many output paths, not 1"):
        next(anonymize_video(tiny_pipeline, clip, tmp_path / "out.mkv", margins=(0.0, 0.5), optim=OPTIM))
    with pytest.raises(FalcoError, match="an output path of its own"):
        next(anonymize_video(tiny_pipeline, clip, [tmp_path / "out.mkv", tmp_path / "out.mkv"], margins=(0.0, 0.5),
                             optim=OPTIM))
    with pytest.raises(FalcoError, match="cannot replace its source"):
        next(anonymize_video(tiny_pipeline, clip, [tmp_path / "out.mkv", clip], margins=(0.0, 0.5), optim=OPTIM))
    with pytest.raises(FalcoError, match="Refine steps must not be negative, not -1"):
        next(anonymize_video(tiny_pipeline, clip, tmp_path / "out.mkv", optim=OPTIM, refine_steps=-1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_one_clip_and_clips_in_a_tree(tiny_weights, clip, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--weights", str(tiny_weights), "--device", "cpu", "--steps", "1", "--no-progress"]
    assert cli.main(["anonymize", str(clip), str(out), *common]) == 0
    record = json.loads((out / "clip.mkv.json").read_text())
    assert record["status"] == "ok" and record["outputs"] == ["clip.mkv", "clip.mkv.latents.safetensors"]
    assert len(record["tracks"]) == 1 and record["tracks"][0]["track"] == 1
    assert record["video"]["frames"] == FRAMES and probe_video(out / "clip.mkv").frames == FRAMES
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["total"], summary["done"]) == (1, 1)

    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "clip.mkv").write_bytes(clip.read_bytes())
    assert cli.main(["anonymize", str(tree), str(tmp_path / "tree-out"), *common]) == 0
    assert probe_video(tmp_path / "tree-out" / "a" / "clip.mkv").frames == FRAMES
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["total"], summary["done"]) == (1, 1)
    # Again: recorded with the same settings, so skipped.
    assert cli.main(["anonymize", str(tree), str(tmp_path / "tree-out"), *common]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 1


@pytest.mark.slow
def test_a_rerun_with_other_m_deletes_the_clips_it_does_not_write(tiny_weights, frames, tmp_path):
    clip = write_clip(tmp_path / "clip.mkv", frames[:2], fps=FPS, audio_hz=None)
    out = tmp_path / "out"
    common = ["--weights", str(tiny_weights), "--device", "cpu", "--steps", "1", "--no-progress"]
    assert cli.main(["anonymize", str(clip), str(out), "--margin", "0", "0.5", *common]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip.m0.5.mkv", "clip.m0.mkv", "clip.mkv.json",
                                                     "clip.mkv.latents.safetensors"]
    record = json.loads((out / "clip.mkv.json").read_text())   # one m per result, none in the optimisation's settings
    assert [t["margin"] for t in record["tracks"]] == [0.0, 0.5] and record["params"]["margins"] == [0.0, 0.5]
    assert "margin" not in record["params"]["optim"] and "margin" not in record["settings"]["optim"]
    assert cli.main(["anonymize", str(clip), str(out), "--margin", "0", *common]) == 0
    record = json.loads((out / "clip.mkv.json").read_text())
    assert record["outputs"] == ["clip.mkv", "clip.mkv.latents.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == ["clip.mkv", "clip.mkv.json", "clip.mkv.latents.safetensors"]


@pytest.mark.slow
def test_a_clip_whose_second_m_fails_leaves_no_clip_of_the_first(tiny_weights, frames, tmp_path, monkeypatch):
    clip = write_clip(tmp_path / "clip.mkv", frames[:2], fps=FPS, audio_hz=None)
    out = tmp_path / "out"
    close = VideoWriter.close

    def second_m_fails(self):   # the m = 0 clip is in place by then: the clips are closed in the order of m
        if self.path.name == "clip.m0.5.mkv":
            self.abort()
            raise RuntimeError("the GPU went away")
        return close(self)

    monkeypatch.setattr(VideoWriter, "close", second_m_fails)
    common = ["--weights", str(tiny_weights), "--device", "cpu", "--steps", "1", "--no-progress"]
    assert cli.main(["anonymize", str(clip), str(out), "--margin", "0", "0.5", *common]) == cli.EXIT_IMAGES_FAILED
    record = json.loads((out / "clip.mkv.json").read_text())
    assert record["status"] == "failed" and "the GPU went away" in record["error"]
    assert sorted(p.name for p in out.iterdir()) == ["clip.mkv.json"]   # the m = 0 clip, listed nowhere, went too


@pytest.mark.slow
def test_a_clip_done_before_missed_frames_were_covered_is_done_again(tiny_weights, frames, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.mkv", frames[:2], fps=FPS, audio_hz=None)
    out = tmp_path / "out"
    common = ["anonymize", str(clip), str(out), "--weights", str(tiny_weights), "--device", "cpu", "--steps", "1",
              "--no-progress"]
    assert cli.main(common) == 0
    record = out / "clip.mkv.json"
    entry = json.loads(record.read_text())
    del entry["settings"]["missed_frames_covered"]   # as recorded before the fix: its frames may show the face
    record.write_text(json.dumps(entry))
    capsys.readouterr()
    assert cli.main(common) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["redone"] == 1
    assert cli.main(common) == 0   # now recorded with the rule: skipped
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 1


def test_cli_refuses_a_file_that_is_no_clip(tmp_path, capsys):
    photo = tmp_path / "notes.txt"
    photo.write_text("hello")
    with pytest.raises(SystemExit) as stop:
        cli.main(["anonymize", str(photo), str(tmp_path / "out")])
    assert stop.value.code == 2 and "neither a folder nor a clip" in capsys.readouterr().err


@pytest.mark.slow
def test_live_webcam_blurs_then_anonymizes(tiny_pipeline, frames):
    from falco.video.live import LiveAnonymizer
    live = LiveAnonymizer(tiny_pipeline, margin=0.0, optim=OPTIM, config=replace(VideoConfig(), live_steps=1))
    first = live.feed(frames[0], now=0.0)
    assert first.shape == frames[0].shape and not np.array_equal(first, frames[0])   # blurred: no face shown
    assert not live.results
    out = live.feed(frames[1], now=live.config.live_build_seconds + 0.1)
    assert list(live.results) == [1] and live.fps > 0
    outside = outside_face(live.shown[1], out.shape)
    assert np.array_equal(out[outside], frames[1][outside]) and not np.array_equal(out, frames[1])


@pytest.mark.slow
def test_stop_ends_a_video_tab_run_with_nothing_written_and_its_example_runs(tiny_pipeline, frames, tmp_path):
    from falco.ui import engine, page, sessions
    demo, app = page.build_app(loader=engine.EngineLoader(lambda: tiny_pipeline), device="cpu", load_now=False)
    tab = app.video_tab
    clip = write_clip(tmp_path / "clip.mkv", frames[:4], fps=FPS, audio_hz=None)
    session = sessions.Session()
    session.ask_run()   # the click
    updates = tab.run(str(clip), 0.0, session)
    assert tab.progress in next(updates)   # a stage's progress
    app.stop(session)
    rest = list(updates)
    assert rest == [{tab.progress: video_tab.video_box("Stopped: nothing was written."), tab.session: session}]
    assert not list(Path(session.folder).rglob("*"))   # no clip, no temporary file, no empty folder
    # A Stop clicked before the next request does not stop that run; that run is the tab's example, as its click
    # runs it.
    from falco.video.synthetic import EXAMPLE_CLIP
    assert tab.example.examples == [[str(EXAMPLE_CLIP)]]
    app.stop(session)
    session.ask_run()
    *_, done = tab.run(str(EXAMPLE_CLIP), 0.0, session)
    assert Path(done[tab.result]).name == "anonymized.mp4"
    out = probe_video(done[tab.result])
    assert (out.frames, out.audio_codec) == (probe_video(EXAMPLE_CLIP).frames, "aac")   # every frame, and the sound
    assert json.loads(Path(done[tab.downloads][1]).read_text())["tracks"]   # its person was found and anonymized
    session.forget()


def test_the_webcam_handler_keeps_one_live_session(tiny_pipeline, frames):
    from falco.ui.engine import EngineLoader
    from falco.ui.handlers import PageHandlers
    tab = PageHandlers(EngineLoader(lambda: tiny_pipeline), on_gpu=False).video_tab
    out, state, live = tab.stream(frames[0], 0.0, None)
    assert out.shape == frames[0].shape and "building" in state
    assert tab.stream(frames[1], 0.0, live)[2] is live              # the same m: the same session
    assert tab.stream(frames[2], 0.5, live)[2] is not live          # another m: identities built again
    assert tab.stream(None, 0.0, live) == (None, "", live)


@pytest.mark.slow
def test_live_webcam_covers_a_face_missed_in_one_frame(tiny_pipeline, frames, monkeypatch):
    from falco.video.live import LiveAnonymizer
    live = LiveAnonymizer(tiny_pipeline, margin=0.0, optim=OPTIM, config=replace(VideoConfig(), live_steps=1))
    live.feed(frames[0], now=0.0)
    live.feed(frames[1], now=live.config.live_build_seconds + 0.1)
    miss_the_face_in(monkeypatch, tiny_pipeline.analyzer, frames[2])
    out = live.feed(frames[2], now=live.config.live_build_seconds + 0.2)
    assert 2 not in live.tracker.tracks[0].faces   # missed indeed
    assert not np.array_equal(out, frames[2])
    landmarks = live.shown[1]
    assert np.array_equal(landmarks, live.smoothed[1])   # the last smoothed ones (frame 1's), nothing guessed
    outside = outside_face(landmarks, out.shape)
    assert np.array_equal(out[outside], frames[2][outside]) and not np.array_equal(out[~outside], frames[2][~outside])


@pytest.mark.slow
def test_live_webcam_covers_a_face_missed_in_the_first_frame_after_building(tiny_pipeline, frames, monkeypatch):
    from falco.video.live import LiveAnonymizer
    live = LiveAnonymizer(tiny_pipeline, margin=0.0, optim=OPTIM, config=replace(VideoConfig(), live_steps=1))
    live.feed(frames[0], now=0.0)
    miss_the_face_in(monkeypatch, tiny_pipeline.analyzer, frames[1])
    out = live.feed(frames[1], now=live.config.live_build_seconds + 0.1)
    assert list(live.results) == [1] and not np.array_equal(out, frames[1])
    outside = outside_face(live.shown[1], out.shape)
    assert np.array_equal(out[outside], frames[1][outside])


def test_the_video_tabs_example_is_the_projects_own_short_clip_with_sound(tmp_path):
    from falco.video.synthetic import EXAMPLE_CLIP, write_example_clip
    assert EXAMPLE_CLIP.stat().st_size < 300_000
    shipped = probe_video(EXAMPLE_CLIP, max_seconds=VideoConfig().app_cpu_max_seconds)   # within the CPU limit
    assert (shipped.codec, shipped.audio_codec) == ("h264", "aac")   # what browsers play
    remade = probe_video(write_example_clip(tmp_path / "example.mp4"))   # the shipped clip is what the code makes
    assert (remade.frames, remade.fps, remade.width, remade.height, remade.seconds, remade.audio_codec) == (
        shipped.frames, shipped.fps, shipped.width, shipped.height, shipped.seconds, shipped.audio_codec)

