"""Detection, FFHQ alignment and paste-back against the astronaut golden (tests/fixtures/align)."""

import json
from importlib.util import find_spec
from pathlib import Path

import dlib
import numpy as np
import pytest
from PIL import Image, ImageFilter

from falco.config import FaceConfig
from falco.errors import NoFaceError, WeightsError
from falco.faces import (
    FaceAnalyzer,
    align_face,
    face_mask,
    ffhq_quad,
    load_photo,
    paste_faces,
    require_usable,
)
from falco.faces.align import _separable_gaussian, gaussian_blur


def dlib_model(filename: str) -> Path:
    # face_recognition_models.pose_predictor_model_location() imports pkg_resources, which
    # recent setuptools no longer ship; the files are found without importing the package.
    spec = find_spec("face_recognition_models")
    assert spec is not None, "pip install -r requirements.txt (face_recognition_models)"
    return Path(spec.submodule_search_locations[0]) / "models" / filename


LANDMARKS = dlib_model("shape_predictor_68_face_landmarks.dat")
CNN_DETECTOR = dlib_model("mmod_human_face_detector.dat")


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return json.loads((fixtures_dir / "align" / "astronaut.json").read_text())


@pytest.fixture(scope="module")
def photo(fixtures_dir):
    return load_photo(fixtures_dir / "align" / "astronaut.png")


@pytest.fixture(scope="module")
def golden_aligned(fixtures_dir):
    return Image.open(fixtures_dir / "align" / "astronaut_face0_1024.png").convert("RGB")


@pytest.fixture(scope="module")
def analyzer():
    return FaceAnalyzer(LANDMARKS)


@pytest.fixture(scope="module")
def faces(analyzer, photo):
    return analyzer.detect(photo)


def golden_landmarks(golden, i=0):
    return np.array(golden["faces"][i]["landmarks68"], np.float64)


# --- detection ---------------------------------------------------------------------------------
def test_detections_landmarks_and_quads_match_golden(faces, golden):
    assert len(faces) == len(golden["faces"])
    for face, ref in zip(faces, golden["faces"]):  # golden lists the face first, then the patch
        assert face.rect == tuple(ref["rect_ltrb"])
        np.testing.assert_array_equal(face.landmarks, np.array(ref["landmarks68"]))
        np.testing.assert_allclose(face.quad, np.array(ref["quad"]), atol=1e-9)


def test_mission_patch_is_reported_but_not_face_zero(faces, golden):
    face, patch = faces
    assert face.usable and face.reason is None and face.score > patch.score
    assert not patch.usable and "not a face" in patch.reason
    assert patch.rect == tuple(golden["faces"][1]["rect_ltrb"])
    assert require_usable(faces) == [0]


def test_ffhq_quad_of_golden_landmarks(golden):
    for ref in golden["faces"]:
        np.testing.assert_allclose(ffhq_quad(np.array(ref["landmarks68"])), np.array(ref["quad"]), atol=1e-9)


def test_too_small_faces_are_reported_with_reason(photo):
    faces = FaceAnalyzer(LANDMARKS, FaceConfig(min_face_size=400)).detect(photo)
    face = next(f for f in faces if f.score > 1.0)
    assert not face.usable and "too small" in face.reason
    with pytest.raises(NoFaceError, match="too small") as caught:
        require_usable(faces)
    assert "(face 1: " in str(caught.value) and "face 0" not in str(caught.value)   # numbered as the page does


def test_photo_without_face_raises_no_face(analyzer, photo):
    for empty in (Image.new("RGB", (300, 200), (128, 128, 128)), photo.crop((340, 0, 512, 300))):
        faces = analyzer.detect(empty)
        assert faces == []
        with pytest.raises(NoFaceError, match="No face"):
            require_usable(faces)


def test_photos_up_to_4k_are_scanned_at_full_resolution_with_one_upsample(analyzer):
    for size in ((512, 512), (1920, 1080), (3840, 2160), (4096, 3072)):
        assert analyzer._scan_plan(size) == (size, 1)
    assert analyzer._scan_plan((6000, 4000)) == ((8192, 5461), 0)  # beyond 4K: bounded, no upsample
    cnn = FaceAnalyzer(LANDMARKS, FaceConfig(use_cnn_detector=True), CNN_DETECTOR)
    assert cnn._scan_plan((1920, 1080)) == ((2048, 1152), 0)  # the CNN keeps a lower bound


def test_large_photo_is_scanned_downscaled_and_mapped_back(photo, golden):
    scale = 5  # 2560 px: a detector bounded to 2048 px scans a 2048 px copy without upsampling
    analyzer = FaceAnalyzer(LANDMARKS, FaceConfig(detect_max_side=2048))
    big = photo.resize((512 * scale, 512 * scale), Image.Resampling.BICUBIC)
    assert analyzer._scan_plan(big.size) == ((2048, 2048), 0)
    face = analyzer.detect(big)[0]
    expected = golden_landmarks(golden) * scale + (scale - 1) / 2  # pixel centres of the upscale
    assert face.usable
    assert np.abs(face.landmarks - expected).max() <= 1.5 * scale
    left, top, right, bottom = face.rect
    cx, cy = expected[27:36].mean(0)  # the nose lies inside the mapped rectangle
    assert left < cx < right and top < cy < bottom


def photo_with_faces(photo, size, placements, seed=0):
    """The astronaut pasted at (x, y, scale) placements onto a noisy canvas of `size`."""
    noise = np.random.default_rng(seed).integers(90, 160, (size[1], size[0], 3), dtype=np.uint8)
    canvas = Image.fromarray(noise)
    for x, y, scale in placements:
        side = round(photo.width * scale)
        canvas.paste(photo.resize((side, side), Image.Resampling.BICUBIC), (x, y))
    return canvas


def reference_scan(photo):
    """dlib's frontal detector on the whole photo at full resolution with one upsample, landmarks on each."""
    pixels = np.asarray(photo)
    rects, _, _ = dlib.get_frontal_face_detector().run(pixels, 1, 0.0)
    predictor = dlib.shape_predictor(str(LANDMARKS))
    return {(r.left(), r.top(), r.right(), r.bottom()): np.array([(p.x, p.y) for p in predictor(pixels, r).parts()])
            for r in rects}


def assert_detections_equal_reference(faces, reference):
    assert {face.rect for face in faces} == set(reference)
    for face in faces:
        np.testing.assert_array_equal(face.landmarks, reference[face.rect])


@pytest.mark.slow
def test_detection_on_a_1080p_photo_equals_the_reference_scan(analyzer, photo):
    # Offsets not multiples of 8, one face cut by the right border.
    big = photo_with_faces(photo, (1920, 1080), [(333, 211, 1.0), (1019, 517, 0.75), (1641, 405, 0.7)])
    faces, reference = analyzer.detect(big), reference_scan(big)
    assert sum(face.usable for face in faces) == 3
    assert_detections_equal_reference(faces, reference)
    # The former 2048 px bound (downscaled, no upsample) moved every rectangle and the landmarks with it.
    bounded = FaceAnalyzer(LANDMARKS, FaceConfig(detect_max_side=2048)).detect(big)
    assert not {face.rect for face in bounded if face.usable} & set(reference)


@pytest.mark.slow
def test_detection_on_a_4k_photo_equals_the_reference_scan(analyzer, photo):
    big = photo_with_faces(photo, (3840, 2160), [(1333, 711, 2.0), (3001, 1117, 1.3), (101, 1805, 0.9)], seed=1)
    faces = analyzer.detect(big)
    assert sum(face.usable for face in faces) == 3
    assert_detections_equal_reference(faces, reference_scan(big))


def test_detect_wants_an_rgb_photo(analyzer, photo):
    with pytest.raises(TypeError, match="load_photo"):
        analyzer.detect(photo.convert("L"))


def test_missing_or_unset_models_raise_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="missing"):
        FaceAnalyzer(tmp_path / "nope.dat")
    (tmp_path / "bad.dat").write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="cannot be read"):
        FaceAnalyzer(tmp_path / "bad.dat")
    with pytest.raises(WeightsError, match="CNN"):
        FaceAnalyzer(LANDMARKS, FaceConfig(use_cnn_detector=True))


@pytest.mark.slow
def test_cnn_detector_finds_the_face(photo, golden):
    analyzer = FaceAnalyzer(LANDMARKS, FaceConfig(use_cnn_detector=True, upsample=0), CNN_DETECTOR)
    faces = analyzer.detect(photo)
    assert faces[0].usable
    assert np.abs(faces[0].landmarks - golden_landmarks(golden)).mean() < 3.0


# --- alignment ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("oversample", [None, 4])  # adaptive (default) and FFHQ's fixed 4096
def test_alignment_of_golden_landmarks_reproduces_golden(photo, golden, golden_aligned, oversample):
    aligned = align_face(photo, golden_landmarks(golden), config=FaceConfig(transform_oversample=oversample))
    assert aligned.image.size == (1024, 1024) and aligned.image.mode == "RGB"
    assert aligned.padded == golden["faces"][0]["padded"]
    np.testing.assert_allclose(aligned.quad, np.array(golden["faces"][0]["quad"]), atol=1e-9)
    assert psnr(aligned.image, golden_aligned) >= 40.0


def test_alignment_of_own_detection_reproduces_golden(photo, faces, golden_aligned):
    assert psnr(align_face(photo, faces[0].landmarks).image, golden_aligned) >= 40.0


def test_alignment_at_other_sizes(photo, golden, golden_aligned):
    aligned = align_face(photo, golden_landmarks(golden), size=256)
    assert aligned.image.size == (256, 256)
    assert psnr(aligned.image, golden_aligned.resize((256, 256), Image.Resampling.LANCZOS)) >= 40.0


def test_landmarks_map_between_photo_and_aligned_frame(photo, golden):
    lm = golden_landmarks(golden)
    aligned = align_face(photo, lm, size=256)
    np.testing.assert_allclose(aligned.to_photo(aligned.landmarks), lm, atol=1e-9)
    np.testing.assert_allclose(aligned.to_aligned(lm), aligned.landmarks, atol=1e-9)
    eyes = aligned.landmarks[36:48].reshape(2, 6, 2).mean(1)
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.01 * 256  # the FFHQ frame levels the eyes
    assert 0.3 * 256 < eyes[:, 0].mean() < 0.7 * 256


def test_shrink_branch_matches_unshrunk_alignment(photo, golden):
    # A face 5x larger than the photo's: at 128 px output the FFHQ shrink (factor 3) runs.
    scale = 5
    big = photo.resize((512 * scale, 512 * scale), Image.Resampling.BICUBIC)
    lm = golden_landmarks(golden)
    small = align_face(photo, lm, size=128)
    shrunk = align_face(big, lm * scale + (scale - 1) / 2, size=128)
    assert psnr(shrunk.image, small.image) >= 30.0


def test_shrink_resizes_only_the_crop_like_the_whole_photo(photo):
    # align_face resizes just the crop through `box`; FFHQ resizes the photo, then crops.
    big = photo.resize((1021, 1021), Image.Resampling.BICUBIC)
    shrunk = (340, 340)
    crop = (57, 31, 301, 254)
    sx, sy = big.width / shrunk[0], big.height / shrunk[1]
    whole = big.resize(shrunk, Image.Resampling.LANCZOS).crop(crop)
    part = big.resize((crop[2] - crop[0], crop[3] - crop[1]), Image.Resampling.LANCZOS,
                      box=(crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy))
    assert np.abs(np.asarray(whole, int) - np.asarray(part, int)).max() <= 1


def inside_source_mask(aligned, photo_size, margin):
    """Aligned pixels whose source lies inside the photo, `margin` px away from its edges."""
    uv = np.stack(np.meshgrid(np.arange(aligned.size), np.arange(aligned.size)), -1).reshape(-1, 2)
    xy = aligned.to_photo(uv)
    w, h = photo_size
    keep = (xy[:, 0] > margin) & (xy[:, 1] > margin) & (xy[:, 0] < w - 1 - margin) & (xy[:, 1] < h - 1 - margin)
    return keep.reshape(aligned.size, aligned.size)


def test_padding_branch_for_a_face_cut_by_the_border(photo, golden):
    lm = golden_landmarks(golden)
    full = align_face(photo, lm)
    left = 200  # cuts the left cheek off: the quad leaves the photo by ~70 px
    cut = photo.crop((left, 0, photo.width, photo.height))
    aligned = align_face(cut, lm - [left, 0])
    assert aligned.padded and not full.padded
    # Where the source is inside the photo (beyond the blur band) the crop is unchanged...
    inside = inside_source_mask(aligned, cut.size, margin=40)  # the blur band reaches ~30 px in
    assert inside.mean() > 0.3
    ours, ref = np.asarray(aligned.image, np.float64), np.asarray(full.image, np.float64)
    assert psnr(ours[inside], ref[inside]) >= 40.0
    # ...and outside it the padding is a blurred reflection fading to the median, not black:
    outside = ~inside_source_mask(aligned, cut.size, margin=-2)
    assert outside.mean() > 0.2
    assert ours[outside].min() > 0
    grad = np.abs(np.diff(ours, axis=1)).sum(-1)
    assert grad[outside[:, 1:]].mean() < 0.5 * grad[inside[:, 1:]].mean()


def test_padding_branch_with_detection_when_the_photo_cuts_the_head(analyzer, photo, golden):
    top = 60  # the hair is cut; the face itself is whole and detected
    cut = photo.crop((0, top, photo.width, photo.height))
    face = analyzer.detect(cut)[0]
    assert face.usable
    assert np.abs(face.landmarks - (golden_landmarks(golden) - [0, top])).max() <= 2
    aligned = align_face(cut, face.landmarks)
    assert aligned.padded
    full = align_face(photo, golden_landmarks(golden))
    inside = inside_source_mask(aligned, cut.size, margin=40)
    assert psnr(np.asarray(aligned.image, float)[inside], np.asarray(full.image, float)[inside]) >= 25.0


def test_fast_gaussian_blur_matches_the_direct_filter():
    rng = np.random.default_rng(0)
    image = np.asarray(Image.fromarray(rng.integers(0, 256, (211, 173), np.uint8))
                       .filter(ImageFilter.GaussianBlur(2)), np.float32) * 1.0
    image[60:90, 40:120] = 255.0  # a hard edge
    for sigma in (2.5, 9.0, 23.0):
        fast, direct = gaussian_blur(image, sigma), _separable_gaussian(image, sigma)
        assert fast.shape == image.shape
        assert np.abs(fast - direct).max() < 0.5
    # Mirrored edges keep a constant image constant; the kernel integrates to one.
    np.testing.assert_allclose(gaussian_blur(np.full((50, 70), 7.0, np.float32), 30.0), 7.0, atol=1e-3)
    delta = np.zeros((41, 41), np.float32)
    delta[20, 20] = 1.0
    blurred = _separable_gaussian(delta, 3.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)
    g = np.exp(-0.5 * (np.arange(-3, 4) / 3.0) ** 2)
    assert blurred[20, 23] / blurred[20, 20] == pytest.approx(g[-1] / g[3], rel=1e-4)


# --- paste-back --------------------------------------------------------------------------------
def quad_bbox_outside(aligned, shape):
    outside = np.ones(shape[:2], bool)
    (x0, y0), (x1, y1) = np.floor(aligned.quad.min(0)).astype(int) - 1, np.ceil(aligned.quad.max(0)).astype(int) + 2
    outside[max(y0, 0):y1, max(x0, 0):x1] = False
    return outside


def test_paste_back_changes_only_the_face(photo, faces):
    aligned = align_face(photo, faces[0].landmarks)
    result = Image.fromarray(255 - np.asarray(aligned.image))  # an obviously different face
    pasted = paste_faces(photo, [(aligned, result)])
    before, after = np.asarray(photo), np.asarray(pasted)
    assert pasted.size == photo.size and pasted is not photo
    changed = np.any(before != after, axis=-1)
    # Outside the mask the bytes are the input's: no change outside the quad...
    assert not changed[quad_bbox_outside(aligned, before.shape)].any()
    # ...nor anywhere the aligned-frame mask is 0 (one photo pixel of slack for resampling).
    slack = int(np.ceil(aligned.size / faces[0].crop_size))
    mask = np.asarray(face_mask(aligned, aligned.size).filter(ImageFilter.MaxFilter(2 * slack + 1)))
    ys, xs = np.nonzero(changed)
    uv = np.clip(np.rint(aligned.to_aligned(np.stack([xs, ys], -1))).astype(int), 0, aligned.size - 1)
    assert (mask[uv[:, 1], uv[:, 0]] > 0).all()
    # The hair above the forehead and the collar below the chin stay; the inner face is replaced.
    lm = faces[0].landmarks
    inner = np.rint(lm[17:68]).astype(int)
    assert changed[inner[:, 1], inner[:, 0]].all()
    expected = 255 - before[inner[:, 1], inner[:, 0]].astype(int)
    assert np.abs(after[inner[:, 1], inner[:, 0]].astype(int) - expected).mean() < 25
    assert not changed[int(lm[19, 1]) - 60, int(lm[19, 0])] and not changed[int(lm[8, 1]) + 25, int(lm[8, 0])]


def test_pasting_the_aligned_face_itself_is_nearly_invisible(photo, faces):
    aligned = align_face(photo, faces[0].landmarks)
    pasted = paste_faces(photo, [(aligned, aligned.image)])
    before, after = np.asarray(photo), np.asarray(pasted)
    changed = np.any(before != after, axis=-1)
    assert changed.sum() > 5000  # the whole face went through the round trip
    assert psnr(before[changed], after[changed]) >= 30.0


def test_paste_several_faces_into_one_photo(analyzer, photo):
    pair = Image.new("RGB", (1024, 512))
    pair.paste(photo, (0, 0))
    pair.paste(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (512, 0))
    faces = [f for f in analyzer.detect(pair) if f.usable]
    assert len(faces) == 2
    colours = [(255, 0, 0), (0, 0, 255)]
    aligned = [align_face(pair, f.landmarks, size=256) for f in faces]
    pasted = np.asarray(paste_faces(pair, [(a, Image.new("RGB", (256, 256), c)) for a, c in zip(aligned, colours)]))
    for face, colour in zip(faces, colours):
        x, y = np.rint(face.landmarks[30]).astype(int)  # nose tip
        np.testing.assert_array_equal(pasted[y, x], colour)
    outside = quad_bbox_outside(aligned[0], pasted.shape) & quad_bbox_outside(aligned[1], pasted.shape)
    np.testing.assert_array_equal(pasted[outside], np.asarray(pair)[outside])


def test_paste_rejects_a_face_from_another_photo(photo, faces):
    aligned = align_face(photo, faces[0].landmarks, size=64)
    with pytest.raises(ValueError, match="photo"):
        paste_faces(photo.crop((0, 0, 300, 300)), [(aligned, aligned.image)])
