import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from falco.config import OptimConfig
from falco.errors import FalcoError, NoFaceError
from falco.loss import FalcoLoss
from falco.optimize import start_wplus
from falco.pipeline import AnonymizationResult, StepEvent, to_tensor

STEPS = 6
MARGINS = (0.0, 0.5, 1.0)
OPTIM = OptimConfig(steps=STEPS, preview_every=3)


@pytest.fixture(scope="module")
def events(tiny_pipeline, astronaut):
    return list(tiny_pipeline.anonymize(astronaut, margins=MARGINS, optim=OPTIM))


@pytest.fixture(scope="module")
def result(events) -> AnonymizationResult:
    return events[-1]


def identity_cosines(pipeline, aligned, wplus: torch.Tensor) -> list[float]:
    """ArcFace cosine between the renders of W+ codes [B, num_ws, D] and the aligned real face, recomputed here."""
    loss = FalcoLoss.for_config(pipeline.nets.arcface, pipeline.nets.farl, OPTIM)
    with torch.no_grad():
        real = loss.real_features(to_tensor([aligned], pipeline.device)).identity
        return (loss.identity_embedding(pipeline.render(wplus.to(pipeline.device))) * real).sum(-1).tolist()


def test_detect_finds_the_face_first(tiny_pipeline, astronaut):
    faces = tiny_pipeline.detect(astronaut)
    assert len(faces) == 2 and faces[0].usable and not faces[1].usable   # face, then the mission patch


def test_events_stream_every_step_then_the_result(events):
    steps, final = events[:-1], events[-1]
    assert all(isinstance(e, StepEvent) for e in steps) and isinstance(final, AnonymizationResult)
    assert [e.step for e in steps] == list(range(1, STEPS + 1))
    assert all(e.total_steps == STEPS for e in steps)
    assert [len(e.previews) for e in steps] == [0, 0, 3, 0, 0, 3]
    assert all(isinstance(p, Image.Image) for p in steps[2].previews)
    assert steps[0].items == [(0, 0.0), (0, 0.5), (0, 1.0)]


def test_loss_terms_are_finite(events):
    for e in events[:-1]:
        assert set(e.losses) == {"identity", "attribute", "total"}
        values = [v for vs in e.losses.values() for v in vs] + e.identity_cosine
        assert len(values) == 4 * 3 and all(math.isfinite(v) for v in values)


def test_each_step_reports_the_loss_of_its_cosine_starting_from_the_fake(events, result, tiny_pipeline):
    # Whether a loss falls in 6 steps is up to the random weights; what the events report is not.
    for e in events[:-1]:
        cosine, identity = torch.tensor(e.identity_cosine), torch.tensor(e.losses["identity"])
        torch.testing.assert_close(identity, (cosine - torch.tensor(MARGINS)).abs())
        torch.testing.assert_close(torch.tensor(e.losses["total"]), OPTIM.lambda_id * identity
                                   + OPTIM.lambda_attr * torch.tensor(e.losses["attribute"]))
    # Step 1 measures the latents the run starts from: the inversion with the fake's w in rows 3..7.
    face = result.faces[0]
    start = start_wplus(face.wplus_inversion[None], tiny_pipeline.bank.w[face.fake_index][None], OPTIM.trained_rows)
    expected = identity_cosines(tiny_pipeline, face.aligned, start)
    assert events[0].identity_cosine == pytest.approx(expected * len(MARGINS), abs=1e-5)


def test_only_rows_3_to_7_change(result, tiny_pipeline):
    for face in result.faces:
        assert torch.equal(face.wplus[:3], face.wplus_inversion[:3])
        assert torch.equal(face.wplus[8:], face.wplus_inversion[8:])
        # Rows 3..7 start at the fake's w, and Adam moves every element that has a gradient (lr each at step 1).
        assert (face.wplus[3:8] != tiny_pipeline.bank.w[face.fake_index]).any(dim=-1).all()


def test_result_holds_every_image_and_measure(result, tiny_pipeline):
    assert [(f.face_index, f.margin) for f in result.faces] == [(0, m) for m in MARGINS]
    assert result.margins == MARGINS and len(result.photos) == 3 and result.photo is result.photos[0]
    for face in result.faces:
        for image in (face.aligned, face.inversion, face.fake, face.anonymized):
            assert image.size == (1024, 1024)
        assert -1 <= face.identity_cosine <= 1 and face.recognizer_distance > 0
        assert face.fake_index == result.params["fake_rows"][0]
        assert face.fake_seed == int(tiny_pipeline.bank.seeds[face.fake_index])
    assert result.params["optim"]["steps"] == STEPS and result.params["margins"] == list(MARGINS)
    # Each cosine is that of the returned W+ to the returned original.  (Not ordered like m: on random weights,
    # m = 0 and m = 0.5 can take the very same steps, and float rounding then orders their cosines.)
    for face in result.faces:
        assert face.identity_cosine == pytest.approx(identity_cosines(tiny_pipeline, face.aligned, face.wplus[None])[0],
                                                     abs=1e-5)


def test_pasted_photo_keeps_every_pixel_outside_the_face(result, tiny_pipeline, astronaut):
    original = np.asarray(Image.open(astronaut).convert("RGB"))
    quad = tiny_pipeline.detect(astronaut)[0].quad
    x0, y0 = np.floor(quad.min(0)).astype(int) - 1
    x1, y1 = np.ceil(quad.max(0)).astype(int) + 2
    for photo in result.photos:
        pasted = np.asarray(photo)
        assert pasted.shape == original.shape
        outside = np.ones(original.shape[:2], bool)
        outside[max(y0, 0):y1, max(x0, 0):x1] = False
        assert np.array_equal(pasted[outside], original[outside])
        assert (pasted[~outside] != original[~outside]).any(axis=-1).mean() > 0.1


@pytest.mark.slow
def test_a_batch_of_margins_equals_single_runs(tiny_pipeline, astronaut, result):
    for batched in result.faces:
        single = list(tiny_pipeline.anonymize(astronaut, margins=(batched.margin,), optim=OPTIM))[-1].faces[0]
        torch.testing.assert_close(single.wplus, batched.wplus, atol=1e-5, rtol=1e-5)
        assert single.identity_cosine == pytest.approx(batched.identity_cosine, abs=1e-5)
        diff = np.abs(np.asarray(single.anonymized, np.int16) - np.asarray(batched.anonymized, np.int16))
        assert diff.max() <= 1


@pytest.mark.slow
def test_same_seed_same_result_and_faces_batch_together(tiny_pipeline, astronaut):
    optim = OptimConfig(steps=2, seed=5)
    # The patch counts as a face here, so that two faces share the batch.
    detections = [replace(face, usable=True, reason=None) for face in tiny_pipeline.detect(astronaut)]

    def run(seed_optim):
        return list(tiny_pipeline.anonymize(astronaut, faces=[0, 1], margins=(0.5,), optim=seed_optim, fake_k=8,
                                            detections=detections))[-1]

    first, again = run(optim), run(optim)
    assert [(f.face_index, f.margin) for f in first.faces] == [(0, 0.5), (1, 0.5)]
    assert first.params["fake_rows"] == again.params["fake_rows"]
    for a, b in zip(first.faces, again.faces):
        assert torch.equal(a.wplus, b.wplus)
        assert np.array_equal(np.asarray(a.anonymized), np.asarray(b.anonymized))
    assert np.array_equal(np.asarray(first.photo), np.asarray(again.photo))
    # The seed chooses among the 8 nearest fakes: some seed gives another fake.
    draws = {tuple(tiny_pipeline.bank.nearest(torch.randn(2, tiny_pipeline.bank.embeddings.shape[1]), k=8,
                                              seed=s).tolist()) for s in range(10)}
    assert len(draws) > 1


def test_closing_the_stream_stops_the_work(tiny_pipeline, astronaut, monkeypatch):
    generator = tiny_pipeline.nets.generator
    calls = []
    original_forward = generator.forward
    monkeypatch.setattr(generator, "forward", lambda *a, **k: calls.append(1) or original_forward(*a, **k))
    stream = tiny_pipeline.anonymize(astronaut, optim=OptimConfig(steps=50))
    next(stream), next(stream)
    before = len(calls)   # two steps: the inversions and fakes are rendered with the results
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    assert before == 2 and len(calls) == before


def test_user_errors_are_one_line_messages(tiny_pipeline, astronaut):
    with pytest.raises(NoFaceError):
        next(tiny_pipeline.anonymize(Image.new("RGB", (200, 200), "gray")))
    with pytest.raises(FalcoError, match="no face 3"):
        next(tiny_pipeline.anonymize(astronaut, faces=[2]))


def test_a_face_the_app_would_not_offer_is_refused(tiny_pipeline, astronaut):
    detections = tiny_pipeline.detect(astronaut)
    with pytest.raises(FalcoError, match="Face 2 cannot be anonymized: .*probably not a face"):
        next(tiny_pipeline.anonymize(astronaut, faces=[0, 1], detections=detections))


@pytest.mark.parametrize("margins, optim, fake_k, match", [
    ((5.0,), OptimConfig(), 1, "m must lie between 0 and 1, not 5"),
    ((0.0, -1.0), OptimConfig(), 1, "not -1"),
    ((float("nan"),), OptimConfig(), 1, "not nan"),
    ((), OptimConfig(), 1, "at least one value of m"),
    ((0.0,), OptimConfig(steps=0), 1, "Steps must be at least 1"),
    ((0.0,), OptimConfig(steps=-3), 1, "not -3"),
    ((0.0,), OptimConfig(lr=-1.0), 1, "learning rate"),
    ((0.0,), OptimConfig(lambda_attr=float("inf")), 1, "lambda_attr"),
    ((0.0,), OptimConfig(seed=-5), 1, "seed"),
    ((0.0,), OptimConfig(seed=2**70), 1, "seed"),
    ((0.0,), OptimConfig(), -2, "fake_k .* at least 1"),
    ((0.0,), OptimConfig(), 0, "fake_k .* at least 1"),
    ((0.0,), OptimConfig(), 10**6, "fake bank holds"),
])
def test_bad_settings_are_refused_before_any_work(tiny_pipeline, astronaut, monkeypatch, margins, optim, fake_k,
                                                  match):
    monkeypatch.setattr(tiny_pipeline.analyzer, "detect", lambda photo: pytest.fail("detected a bad run's faces"))
    with pytest.raises(FalcoError, match=match):
        next(tiny_pipeline.anonymize(astronaut, margins=margins, optim=optim, fake_k=fake_k))


def test_one_door_for_a_runs_settings(tiny_pipeline, result):
    """Photos and clips take their defaults and checks from ``settings``; m is the run's alone, recorded once."""
    run = tiny_pipeline.settings()
    assert (run.margins, run.optim, run.fake_k) == ((0.0,), OptimConfig(), 1)
    assert tiny_pipeline.settings([0.5, 0.5], OPTIM, 2) == type(run)((0.5,), OPTIM, 2)
    with pytest.raises(FalcoError, match="fake bank holds"):
        tiny_pipeline.settings(fake_k=len(tiny_pipeline.bank) + 1)
    assert "margin" not in result.params["optim"] and result.params["margins"] == list(MARGINS)


@pytest.mark.slow
def test_the_engine_imports_nothing_of_clips():
    import subprocess
    import sys
    code = "import sys, falco.pipeline; print(sorted(m for m in sys.modules if m.startswith('falco.video')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_margins_at_the_limits_pass_and_repeats_go(tiny_pipeline):
    from falco.checks import check_run_settings
    assert check_run_settings([1, 0, 1.0], OptimConfig(seed=2**63 - 1), 1, len(tiny_pipeline.bank)) == (1.0, 0.0)


def test_previews_are_shrunk_before_leaving_the_device():
    from falco.pipeline import preview_images, to_image
    ramp = torch.linspace(-1, 1, 512)
    smooth = torch.stack([ramp[None, :].expand(512, -1), ramp[:, None].expand(-1, 512),
                          ramp.flip(0)[None].expand(512, -1)])
    images = torch.stack([smooth, -smooth])
    previews = preview_images(images, 128)
    assert [p.size for p in previews] == [(128, 128)] * 2
    lanczos = np.asarray(to_image(images[1], 128), dtype=float)
    assert np.abs(np.asarray(previews[1], dtype=float) - lanczos).max() <= 2   # the same picture as PIL's resize
    small = preview_images(images[:, :, :64, :64], 128)   # already small: kept as it is
    assert np.array_equal(np.asarray(small[0]), np.asarray(to_image(images[0, :, :64, :64])))
