import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import falco.optimize as optimize_module
from falco.config import OptimConfig
from falco.loss import FalcoLoss
from falco.models.arcface import identity_preprocess, identity_preprocess_matrix
from falco.models.farl import farl_preprocess, farl_preprocess_matrix
from falco.optimize import compose_wplus, optimize_latents, step_losses

STEPS = 10
MARGINS = (0.0, 0.3)


class Counting:
    """Wraps a callable and counts the images it was called on."""

    def __init__(self, fn):
        self.fn, self.batches = fn, []

    def __call__(self, x, *args, **kwargs):
        self.batches.append(x.shape[0])
        return self.fn(x, *args, **kwargs)


@pytest.fixture(scope="module")
def nets(tiny_nets):
    generator, arcface, farl = tiny_nets
    return generator, FalcoLoss(arcface, farl, lambda_id=10.0, lambda_attr=0.1)


@pytest.fixture(scope="module")
def problem(fixtures_dir, nets):
    generator, loss = nets
    face = Image.open(fixtures_dir / "align" / "astronaut_face0_1024.png").convert("RGB").resize((128, 128))
    real = torch.from_numpy(np.array(face)).permute(2, 0, 1)[None].float() / 127.5 - 1
    gen = torch.Generator().manual_seed(0)
    wplus_real = torch.randn(1, generator.num_ws, generator.style_dim, generator=gen)
    w_fake = torch.randn(1, generator.style_dim, generator=gen)
    return real, wplus_real, w_fake


def run(nets, problem, margins, config=OptimConfig(steps=STEPS)):
    generator, loss = nets
    real, wplus_real, w_fake = problem
    b = len(margins)
    features = loss.real_features(real).select(torch.zeros(b, dtype=torch.long))
    return list(optimize_latents(generator, loss, features, wplus_real.expand(b, -1, -1), w_fake.expand(b, -1),
                                 torch.tensor(margins), config))


@pytest.fixture(scope="module")
def counted_run(nets, problem):
    generator, loss = nets
    arcface_calls, farl_calls = Counting(loss.arcface.forward), Counting(loss.farl.tokens)
    loss.arcface.forward, loss.farl.tokens = arcface_calls, farl_calls
    try:
        steps = run(nets, problem, MARGINS)
    finally:
        del loss.arcface.forward, loss.farl.tokens
    return steps, arcface_calls.batches, farl_calls.batches


def test_loss_terms_follow_the_definition(nets, problem):
    generator, deterministic_loss = nets
    loss = FalcoLoss(deterministic_loss.arcface, deterministic_loss.farl, 10.0, 0.1, deterministic=False)
    real, wplus_real, _ = problem
    with torch.no_grad():
        anon = generator(wplus_real)
        terms = loss(anon, loss.real_features(real), torch.tensor([0.25]))
        e_anon = loss.arcface(identity_preprocess(anon))
        e_real = loss.arcface(identity_preprocess(real))
        t_anon = loss.farl.tokens(farl_preprocess(anon, loss.farl.config["image_size"]))
        t_real = loss.farl.tokens(farl_preprocess(real, loss.farl.config["image_size"]))
    cosine = F.cosine_similarity(e_anon, e_real)
    # FALCO's attribute loss: one L1 loss (mean) per token, summed over the tokens.
    attribute = sum(F.l1_loss(t_anon[:, i], t_real[:, i]) for i in range(t_real.shape[1]))
    torch.testing.assert_close(terms.identity_cosine, cosine)
    torch.testing.assert_close(terms.identity, (cosine - 0.25).abs())
    torch.testing.assert_close(terms.attribute, attribute[None])
    torch.testing.assert_close(terms.total, 10 * terms.identity + 0.1 * terms.attribute)
    assert terms.attribute.item() > 0 and cosine.abs().item() < 0.999


@pytest.mark.parametrize("size, farl_size", [(64, 32), (1024, 224), (224, 224)])
def test_matrix_preprocessing_is_the_model_modules_preprocessing(size, farl_size):
    gen = torch.Generator().manual_seed(size)
    x = (torch.rand(2, 3, size, size, generator=gen) * 2 - 1).requires_grad_(True)
    for ours, theirs in ((identity_preprocess_matrix, identity_preprocess),
                         (lambda t: farl_preprocess_matrix(t, farl_size), lambda t: farl_preprocess(t, farl_size))):
        a, b = ours(x), theirs(x)
        # float32 rounding of two summation orders, times 1/std (~3.7) for FaRL's normalisation
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-5)
        # Same linear map, so the same gradients for any upstream gradient.
        weight = torch.randn(a.shape, generator=gen)
        grad_a, = torch.autograd.grad((a * weight).sum(), x)
        grad_b, = torch.autograd.grad((b * weight).sum(), x)
        assert (grad_a - grad_b).abs().max() <= 1e-4 * grad_b.abs().max()


def test_real_face_against_itself_costs_only_the_margin(nets, problem):
    # Both sides go through the same preprocessing: an image is identical to itself.
    _, loss = nets
    real = problem[0]
    terms = loss(real, loss.real_features(real), torch.tensor([0.2]))
    torch.testing.assert_close(terms.identity_cosine, torch.ones(1))
    torch.testing.assert_close(terms.attribute, torch.zeros(1))
    torch.testing.assert_close(terms.identity, torch.tensor([0.8]))


def test_steps_are_streamed_with_finite_losses(counted_run):
    steps = counted_run[0]
    assert [s.step for s in steps] == list(range(1, STEPS + 1))
    assert all(s.total_steps == STEPS for s in steps)
    for s in steps:
        for term in (s.terms.identity_cosine, s.terms.identity, s.terms.attribute, s.terms.total):
            assert term.shape == (2,) and torch.isfinite(term).all()
        assert s.image.shape == (2, 3, 64, 64)


def test_only_rows_3_to_7_change(counted_run, problem):
    _, wplus_real, w_fake = problem
    for step in counted_run[0]:
        for item in range(2):
            assert torch.equal(step.wplus[item, :3], wplus_real[0, :3])
            assert torch.equal(step.wplus[item, 8:], wplus_real[0, 8:])
            # Every trained row moves: Adam moves each element that has a gradient (by about lr at step 1).
            assert (step.wplus[item, 3:8] != w_fake[0]).any(dim=-1).all()


def test_the_first_step_is_adams_step_down_the_gradient(counted_run, nets, problem):
    """Whether the loss falls within a few steps is up to the random weights; the direction of the first step is
    not.  Adam's first update is lr * g / (|g| + 1e-8): lr against the sign of every gradient element above 1e-6
    (to 1%), never more than lr.  The gradient of the start latents is recomputed here."""
    generator, loss = nets
    real, wplus_real, w_fake = problem
    b = len(MARGINS)
    trained = w_fake[:, None].expand(b, 5, -1).clone().requires_grad_(True)
    features = loss.real_features(real).select(torch.zeros(b, dtype=torch.long))
    _, terms = step_losses(generator, loss, features, compose_wplus(wplus_real.expand(b, -1, -1), trained, (3, 8)),
                           torch.tensor(MARGINS), OptimConfig())
    grad, = torch.autograd.grad(terms.total.sum(), trained)
    first = counted_run[0][0]
    torch.testing.assert_close(first.terms.total, terms.total.detach())   # the terms of the latents it started from
    moved = first.wplus[:, 3:8] - w_fake[:, None]
    clear = grad.abs() > 1e-6
    assert clear.float().mean() > 0.5, grad.abs().max()   # the check covers most elements
    torch.testing.assert_close(moved[clear], -first.lr * grad[clear].sign(), atol=0.01 * first.lr, rtol=0)
    assert moved.abs().max() <= first.lr * (1 + 1e-5)


def test_real_features_are_computed_once(counted_run):
    # The real face once (one face, shared by both margins), then the anonymized items only: on the
    # CPU one item per pass (OptimConfig.max_batch), so two passes per step.
    _, arcface_batches, farl_batches = counted_run
    assert arcface_batches == [1] + [1] * (len(MARGINS) * STEPS)
    assert farl_batches == [1] + [1] * (len(MARGINS) * STEPS)


def test_items_per_pass():
    config, cpu, cuda = OptimConfig(), torch.device("cpu"), torch.device("cuda")
    assert optimize_module.items_per_pass(config, cpu, 5) == 1 and optimize_module.items_per_pass(config, cuda, 5) == 5
    assert optimize_module.items_per_pass(OptimConfig(max_batch=2), cuda, 5) == 2
    assert optimize_module.items_per_pass(OptimConfig(max_batch=8), cpu, 5) == 5
    with pytest.raises(ValueError, match="at least 1"):
        optimize_module.items_per_pass(OptimConfig(max_batch=0), cpu, 5)


def test_network_weights_get_no_gradients(counted_run, nets):
    generator, loss = nets
    for net in (generator, loss.arcface, loss.farl):
        assert all(p.grad is None and not p.requires_grad for p in net.parameters())


def test_learning_rate_drops_at_75_and_90_percent(counted_run):
    lrs = [s.lr for s in counted_run[0]]
    assert lrs == pytest.approx([0.01] * 7 + [0.008] * 2 + [0.0064])


@pytest.fixture(scope="module")
def float64_nets(nets):
    """The tiny networks in float64, with the loss's resampling as F.interpolate (its matrix form is float32)."""
    generator, loss = nets
    copies = [copy.deepcopy(net).double() for net in (generator, loss.arcface, loss.farl)]
    return copies[0], FalcoLoss(copies[1], copies[2], lambda_id=10.0, lambda_attr=0.1, deterministic=False)


@pytest.mark.slow
@pytest.mark.parametrize("max_batch", [None, 2, 3], ids=["cpu-default-1-per-pass", "passes-of-2", "one-pass"])
def test_a_batch_of_margins_equals_single_runs(float64_nets, problem, max_batch):
    # What the code guarantees: each item's steps depend on its own latents only, so a batch takes the steps of
    # single runs up to the rounding of other batch shapes.  Adam divides each gradient element by its own size,
    # so in float32 that rounding (~1e-7) grows by the spread of gradient sizes, which the random weights (and
    # the machine's kernels) set: 2e-4 was seen.  In float64 the same rounding is ~1e-16, and 1e-9 is a bound any
    # spread of gradients keeps, while a batch that mixed its items (one item's m or latents reaching another's
    # loss) would move W+ by about lr = 1e-2 per step.
    margins = (0.0, 0.5, 1.0)
    config = OptimConfig(steps=4, max_batch=max_batch)
    problem64 = tuple(t.double() for t in problem)
    batch = run(float64_nets, problem64, margins, config)
    assert batch[-1].wplus.dtype == torch.float64
    for i, m in enumerate(margins):
        single = run(float64_nets, problem64, (m,), config)
        torch.testing.assert_close(batch[-1].wplus[i], single[-1].wplus[0], atol=1e-9, rtol=0)
        torch.testing.assert_close(batch[-1].terms.total[i], single[-1].terms.total[0], atol=1e-9, rtol=1e-9)
    # Each item was given its own m (equal single runs alone would not show it).
    first = batch[0].terms
    torch.testing.assert_close(first.identity, (first.identity_cosine - torch.tensor(margins).double()).abs())


def test_same_inputs_same_result(nets, problem):
    config = OptimConfig(steps=2)
    assert torch.equal(run(nets, problem, (0.5,), config)[-1].wplus, run(nets, problem, (0.5,), config)[-1].wplus)


def test_closing_the_stream_stops_the_work(nets, problem):
    generator, loss = nets
    real, wplus_real, w_fake = problem
    calls = Counting(generator.forward)
    generator.forward = calls
    try:
        stream = optimize_latents(generator, loss, loss.real_features(real), wplus_real, w_fake,
                                  torch.tensor([0.0]), OptimConfig(steps=50))
        next(stream), next(stream)
        stream.close()
        with pytest.raises(StopIteration):
            next(stream)
    finally:
        del generator.forward
    assert calls.batches == [1, 1]


def test_skip_output_option_computes_losses_at_the_lower_resolution(nets, problem, monkeypatch):
    generator, loss = nets
    monkeypatch.setattr(optimize_module, "LOSS_RESOLUTION", 16)
    steps = run(nets, problem, (0.0,), OptimConfig(steps=2, loss_on_skip256=True))
    assert steps[0].image.shape[-1] == 16
    real, wplus_real, w_fake = problem
    start = optimize_module.compose_wplus(wplus_real, w_fake[:, None].expand(-1, 5, -1), (3, 8))
    with torch.no_grad():
        expected = loss(generator(start, resolution=16), loss.real_features(real), torch.zeros(1))
    torch.testing.assert_close(steps[0].terms.total, expected.total)


def test_trained_rows_must_fit_in_wplus(nets, problem):
    with pytest.raises(ValueError, match="trained_rows"):
        run(nets, problem, (0.0,), OptimConfig(steps=1, trained_rows=(3, 12)))
