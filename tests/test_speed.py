"""The fast loop computes what a plain FALCO loop computes; the speed options stay within their tolerances."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from falco import cuda_graph, optimize
from falco.benchmarks import optim as bench
from falco.config import OptimConfig
from falco.loss import FalcoLoss
from falco.models.farl import farl_preprocess
from falco.optimize import (
    compose_wplus,
    optimize_latents,
    start_wplus,
    step_losses,
)
from falco.results import StepEvent

MARGINS = torch.tensor([0.0, 0.6])
# bf16 autocast against float32 (README "Speed"): loss terms and the gradient in the trained rows.
BF16_TERMS_RTOL = 0.02
BF16_GRAD_COSINE = 0.99


@pytest.fixture(scope="module")
def nets(tiny_nets):
    return bench.Networks(torch.device("cpu"), **dict(zip(bench.NETWORKS, tiny_nets)))


@pytest.fixture(scope="module")
def problem(nets):
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    wplus_real = torch.randn(2, nets.generator.num_ws, nets.generator.style_dim, generator=gen)
    w_fake = torch.randn(2, nets.generator.style_dim, generator=gen)
    return real, wplus_real, w_fake


def reference_terms(nets, wplus, real, margins, lambda_id=10.0, lambda_attr=0.1):
    """FALCO's losses written plainly: the real face's features recomputed, the images resized with
    F.interpolate as torchvision's Resize does, one L1 loss per token and per item."""
    def identity(x):
        x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
        return nets.arcface(F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], 112))

    def tokens(x):
        return nets.farl.tokens(farl_preprocess(x, nets.farl.config["image_size"]))

    anon = nets.generator(wplus)
    cosine = F.cosine_similarity(identity(anon), identity(real).detach())
    anon_tokens, real_tokens = tokens(anon), tokens(real)
    attribute = torch.stack([sum(F.l1_loss(anon_tokens[b, i], real_tokens[b, i]) for i in range(anon_tokens.shape[1]))
                             for b in range(anon.shape[0])])
    return cosine, lambda_id * (cosine - margins).abs() + lambda_attr * attribute


def our_terms_and_gradient(nets, problem, config, wplus=None):
    real, wplus_real, w_fake = problem
    loss = FalcoLoss.for_config(nets.arcface, nets.farl, config)
    wplus = start_wplus(wplus_real, w_fake, config.trained_rows) if wplus is None else wplus
    trained = wplus[:, 3:8].clone().requires_grad_(True)
    _, terms = step_losses(nets.generator, loss, loss.real_features(real), compose_wplus(wplus_real, trained, (3, 8)),
                           MARGINS, config)
    grad, = torch.autograd.grad(terms.total.sum(), trained)
    return terms, grad


def reference_gradient(nets, problem, wplus):
    real, wplus_real, _ = problem
    trained = wplus[:, 3:8].clone().requires_grad_(True)
    cosine, total = reference_terms(nets, compose_wplus(wplus_real, trained, (3, 8)), real, MARGINS)
    grad, = torch.autograd.grad(total.sum(), trained)
    return cosine.detach(), total.detach(), grad


@pytest.mark.parametrize("config", [OptimConfig(), OptimConfig(deterministic=False), OptimConfig(channels_last=True)],
                         ids=["default", "interpolate", "channels_last"])
def test_fast_step_computes_the_plain_losses_and_gradient(nets, problem, config):
    _, wplus_real, w_fake = problem
    start = start_wplus(wplus_real, w_fake, (3, 8))
    terms, grad = our_terms_and_gradient(nets, problem, config)
    cosine, total, reference = reference_gradient(nets, problem, start)
    torch.testing.assert_close(terms.identity_cosine, cosine, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms.total, total, atol=1e-5, rtol=1e-5)
    assert (grad - reference).abs().max() <= 1e-4 * reference.abs().max()
    assert reference.abs().max() > 0


@pytest.mark.slow
def test_fast_loop_takes_the_plain_loops_steps(nets, problem):
    # In float64, the loss's resampling as F.interpolate (the plain loop's; its matrix form is float32, and its
    # float32 step is checked above): Adam divides each gradient element by its own scale, so in float32 the
    # rounding of the tiniest elements reaches W+ by an amount the machine's kernels set (1.6e-4 was seen on one
    # thread, past the 1e-4 below); in float64 the loops stayed within 1e-7 of each other, while a loop that took
    # other steps would move W+ by up to lr = 1e-2.
    nets = type(nets)(nets.device, **{name: copy.deepcopy(getattr(nets, name)).double() for name in bench.NETWORKS})
    real, wplus_real, w_fake = (t.double() for t in problem)
    config = OptimConfig(steps=3, lr_milestones=())
    loss = FalcoLoss(nets.arcface, nets.farl, config.lambda_id, config.lambda_attr, deterministic=False)
    ours = list(optimize_latents(nets.generator, loss, loss.real_features(real), wplus_real, w_fake, MARGINS, config))

    trained = w_fake[:, None].expand(-1, 5, -1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([trained], lr=config.lr)
    for step in ours:
        _, total = reference_terms(nets, compose_wplus(wplus_real, trained, (3, 8)), real, MARGINS)
        torch.testing.assert_close(step.terms.total, total.detach(), atol=1e-4, rtol=1e-5)
        optimizer.zero_grad()
        total.sum().backward()
        optimizer.step()
        torch.testing.assert_close(step.wplus[:, 3:8], trained.detach(), atol=1e-4, rtol=0)
    # The loop did move: Adam's first step is lr * g / (|g| + 1e-8), lr to 1% for any gradient element above 1e-6.
    assert (ours[0].wplus[:, 3:8] - w_fake[:, None]).abs().max() >= 0.99 * config.lr


def test_channels_last_runs_every_convolution_in_nhwc(nets, problem):
    real, wplus_real, w_fake = problem
    loss = FalcoLoss(nets.arcface, nets.farl, 10.0, 0.1)
    features = loss.real_features(real)
    layouts = []
    hooks = [m.register_forward_pre_hook(lambda m, args: layouts.append(args[0].is_contiguous(
             memory_format=torch.channels_last))) for net in (nets.generator, nets.arcface)
             for m in net.modules() if isinstance(m, torch.nn.Conv2d) or type(m).__name__ == "ModulatedConv2d"]
    try:
        step = next(optimize_latents(nets.generator, loss, features, wplus_real, w_fake, MARGINS,
                                     OptimConfig(steps=1, channels_last=True, max_batch=len(MARGINS))))
    finally:
        for h in hooks:
            h.remove()
    assert len(layouts) == len(hooks) and all(layouts)
    assert step.image.is_contiguous(memory_format=torch.channels_last)


def test_bf16_stays_within_the_stated_tolerance(nets, problem):
    exact, grad = our_terms_and_gradient(nets, problem, OptimConfig())
    fast, fast_grad = our_terms_and_gradient(nets, problem, OptimConfig(precision="bf16", channels_last=True))
    assert not torch.equal(fast.total, exact.total)   # autocast did run in bf16
    for a, b in ((fast.identity_cosine, exact.identity_cosine), (fast.attribute, exact.attribute),
                 (fast.total, exact.total)):
        assert ((a - b).abs() <= BF16_TERMS_RTOL * b.abs().clamp_min(0.1)).all(), (a, b)
    assert F.cosine_similarity(fast_grad.flatten(), grad.flatten(), dim=0) >= BF16_GRAD_COSINE


def test_unknown_precision_is_refused(nets, problem):
    real, wplus_real, w_fake = problem
    loss = FalcoLoss(nets.arcface, nets.farl, 10.0, 0.1)
    with pytest.raises(ValueError, match="precision"):
        next(optimize_latents(nets.generator, loss, loss.real_features(real), wplus_real, w_fake, MARGINS,
                              OptimConfig(precision="fp8")))


def run_steps(nets, problem, config):
    real, wplus_real, w_fake = problem
    loss = FalcoLoss.for_config(nets.arcface, nets.farl, config)
    return list(optimize_latents(nets.generator, loss, loss.real_features(real), wplus_real, w_fake, MARGINS, config))


class RefusedRecording:
    """Stands in for CapturedStep where recording fails, as capture does on an operation it cannot record."""
    attempts = 0
    error: Exception = RuntimeError("operation not permitted when stream is capturing")

    def __init__(self, run, trained):
        RefusedRecording.attempts += 1
        raise self.error


@pytest.fixture
def refused_recording(monkeypatch):
    """Recording that fails, tried wherever the loop would record on CUDA; a process that has not failed yet."""
    monkeypatch.setattr(RefusedRecording, "attempts", 0)
    monkeypatch.setattr(cuda_graph, "_recording_failed", None)
    monkeypatch.setattr(cuda_graph, "CapturedStep", RefusedRecording)
    return monkeypatch


@pytest.mark.slow
def test_a_step_that_cannot_be_recorded_runs_eagerly(nets, problem, refused_recording, caplog):
    steps = cuda_graph.MIN_STEPS_TO_RECORD
    eager = run_steps(nets, problem, OptimConfig(steps=steps, cuda_graph=False))
    assert run_steps(nets, problem, OptimConfig(steps=steps))[-1].wplus.equal(eager[-1].wplus)
    assert RefusedRecording.attempts == 0   # the CPU runs eagerly without trying

    refused_recording.setattr(cuda_graph, "can_record", lambda device: cuda_graph._recording_failed is None)
    run_steps(nets, problem, OptimConfig(steps=steps - 1))
    assert RefusedRecording.attempts == 0   # too short a run to pay for a recording
    with caplog.at_level(logging.WARNING, logger="falco.cuda_graph"):
        fallback = run_steps(nets, problem, OptimConfig(steps=steps))
    assert RefusedRecording.attempts == 1 and "running eagerly" in caplog.text   # tried, and said so
    for ours, reference in zip(fallback, eager, strict=True):
        assert ours.terms.total.equal(reference.terms.total) and ours.wplus.equal(reference.wplus)
    run_steps(nets, problem, OptimConfig(steps=steps))
    assert RefusedRecording.attempts == 1   # after a failed capture the process records no more

    refused_recording.setattr(cuda_graph, "_recording_failed", None)
    refused_recording.setattr(optimize, "compiled_step_losses", lambda mode: optimize.step_losses)
    for config in (OptimConfig(steps=steps, cuda_graph=False), OptimConfig(steps=steps, compile="reduce-overhead")):
        assert run_steps(nets, problem, config)[-1].wplus.equal(eager[-1].wplus)
    assert RefusedRecording.attempts == 1   # switched off, or torch.compile records its own graphs: never tried


def test_running_out_of_memory_while_recording_is_raised(nets, problem, refused_recording):
    refused_recording.setattr(cuda_graph, "can_record", lambda device: True)
    refused_recording.setattr(RefusedRecording, "error", torch.cuda.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_steps(nets, problem, OptimConfig(steps=cuda_graph.MIN_STEPS_TO_RECORD))
    assert cuda_graph._recording_failed is None   # not a recording problem: later runs may record


def test_close_to_compares_against_the_largest_magnitude():
    reference = torch.tensor([10.0, -0.001, 3.0])
    assert cuda_graph.close_to(reference + 0.009, reference)             # 0.009 <= 1e-3 * 10
    assert not cuda_graph.close_to(reference + torch.tensor([0, 0.02, 0]), reference)
    assert not cuda_graph.close_to(torch.full_like(reference, float("nan")), reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replays_take_the_eager_steps(nets, problem, caplog, monkeypatch):
    device = torch.device("cuda")
    on_device = bench.Networks(device, **{name: getattr(nets, name).to(device) for name in bench.NETWORKS})
    real, wplus_real, w_fake = (t.to(device) for t in problem)
    loss = FalcoLoss(on_device.arcface, on_device.farl, 10.0, 0.1)
    features = loss.real_features(real)
    recordings = []

    class Counted(cuda_graph.CapturedStep):
        def __init__(self, *args):
            recordings.append(1)
            super().__init__(*args)

    monkeypatch.setattr(cuda_graph, "CapturedStep", Counted)
    steps = cuda_graph.MIN_STEPS_TO_RECORD
    try:
        with caplog.at_level(logging.WARNING, logger="falco.cuda_graph"):
            runs = [list(optimize_latents(on_device.generator, loss, features, wplus_real, w_fake, MARGINS.to(device),
                                          OptimConfig(steps=steps, cuda_graph=graphed))) for graphed in (False, True)]
    finally:
        for net in (nets.generator, nets.arcface, nets.farl):
            net.cpu()
    for eager, graphed in zip(*runs):
        torch.testing.assert_close(graphed.terms.total, eager.terms.total, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(graphed.image, eager.image, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(graphed.wplus, eager.wplus, atol=1e-4, rtol=0)   # Adam: see above
    assert not torch.equal(runs[1][0].image, runs[1][-1].image)   # each step's image is its own copy
    assert recordings == [1] and "running eagerly" not in caplog.text   # recorded once, replays used


class HostAccess(TorchDispatchMode):
    """Names each op that CUDA graph capture cannot record: one with a host (CPU) tensor among its inputs or
    outputs (host data or a copy in or out), or one that reads a device value back to Python."""

    READS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.equal", "aten.nonzero", "aten.lift_fresh",
             "aten.lift_fresh_copy"}

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = pytree.tree_leaves((args, kwargs, out))
        name = str(func.overloadpacket)
        if name in self.READS or any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in leaves):
            self.found.append(name)
        return out


class HostCalls(TorchFunctionMode):
    """Names each call that makes a tensor from host data or brings a value to the host: on a device these
    copy (not seen by dispatch modes, which see no copy when the target is meta)."""

    CALLS = {"tensor", "as_tensor", "new_tensor", "from_numpy", "cpu", "numpy", "tolist", "item"}

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.CALLS:
            self.found.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.slow
@pytest.mark.parametrize("config", [OptimConfig(), OptimConfig(loss_on_skip256=True), OptimConfig(channels_last=True),
                                    OptimConfig(deterministic=False)],
                         ids=["exact", "skip256", "channels_last", "interpolate"])
def test_the_recorded_step_never_touches_the_host(nets, config):
    """The step that OptimConfig.cuda_graph records (forward and backward, after its warm-up pass), run on the
    meta device, a device that is not the host: no host tensors, copies or reads of values inside.  Not covered
    here: bf16 (autocast has no meta device) and what only CUDA kernels do (test_cuda_graph_replays_...)."""
    generator, arcface, farl = (copy.deepcopy(net).to("meta") for net in (nets.generator, nets.arcface, nets.farl))
    loss = FalcoLoss.for_config(arcface, farl, config)
    real = loss.real_features(torch.empty(2, 3, 64, 64, device="meta"))
    wplus_real = torch.empty(2, generator.num_ws, generator.style_dim, device="meta")
    trained = torch.empty(2, 5, generator.style_dim, device="meta", requires_grad=True)
    margins = torch.zeros(2, device="meta")

    def step():
        _, terms = step_losses(generator, loss, real, compose_wplus(wplus_real, trained, (3, 8)), margins, config)
        terms.total.sum().backward()

    step()   # the warm-up: cached resampling matrices and statistics are made here, as before a capture
    with HostCalls() as calls, HostAccess() as host:
        step()
    assert calls.found == [] and host.found == [] and trained.grad.shape == trained.shape
    with HostCalls() as calls, HostAccess() as host:   # the checks themselves see host values inside
        torch.ones(2, device="meta") * torch.tensor(2.0) + trained.new_tensor([1.0])
    assert "aten.mul" in host.found and calls.found == ["tensor", "new_tensor"]


@pytest.mark.slow
def test_compiled_steps_equal_eager_steps(nets, problem, monkeypatch):
    """OptimConfig.compile compiles the step with that mode, and the compiled step takes eager's steps.

    The step is traced by dynamo and split into forward and backward graphs by AOTAutograd, as for any backend; it
    runs here on the "aot_eager" backend, which executes those graphs with PyTorch's own kernels: what this proves
    is that the step traces whole and that the loop handles a compiled step's outputs.  Inductor's code generation
    (minutes of C++ compiling on a CPU for these networks) is PyTorch's to test."""
    compiled, torch_compile = [], torch.compile

    def compile_on_aot_eager(fn, mode=None, **kwargs):
        compiled.append((fn, mode))
        return torch_compile(fn, backend="aot_eager", **kwargs)

    optimize.compiled_step_losses.cache_clear()
    monkeypatch.setattr(optimize.torch, "compile", compile_on_aot_eager)
    real, wplus_real, w_fake = problem
    loss = FalcoLoss(nets.arcface, nets.farl, 10.0, 0.1)
    features = loss.real_features(real)
    try:
        runs = [list(optimize_latents(nets.generator, loss, features, wplus_real, w_fake, MARGINS,
                                      OptimConfig(steps=2, compile=mode))) for mode in (None, "default")]
    finally:
        optimize.compiled_step_losses.cache_clear()   # no later test gets the aot_eager step
        torch._dynamo.reset()
    assert compiled == [(optimize.step_losses, "default")]
    for eager, compiled_step in zip(*runs):
        torch.testing.assert_close(compiled_step.terms.total, eager.terms.total, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(compiled_step.wplus, eager.wplus, atol=1e-4, rtol=0)   # Adam: see above


def in_a_fresh_process(code: str) -> str:
    """What ``code`` prints, run by a new Python: in a long-lived process the heap may be unable to grow in place
    (another mapping in the way), and glibc then serves even the main heap from elsewhere."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


HEAP_CHECK = """
import torch
from falco.allocator import reuse_freed_memory, reusing
assert reuse_freed_memory()
def in_heap(block):
    with open("/proc/self/maps") as maps:
        start, end = next(l.split()[0] for l in maps if l.rstrip().endswith("[heap]")).split("-")
    return int(start, 16) <= block.data_ptr() < int(end, 16)
with reusing():
    inside = in_heap(torch.empty(48 * 2**20 // 4))   # glibc would mmap a block this large, fresh each time
print(inside, in_heap(torch.empty(48 * 2**20 // 4)))
"""


@pytest.mark.slow
def test_large_blocks_come_from_the_reused_heap_inside_loops_only():
    assert in_a_fresh_process(HEAP_CHECK) == "True False"


RELEASE_CHECK = """
import torch
from falco.allocator import reuse_freed_memory, reusing
from falco.benchmarks import resident_bytes
assert reuse_freed_memory()
with reusing():
    with reusing():   # a loop inside a loop: its end gives nothing back while the outer one runs
        block = torch.ones(512 * 2**20, dtype=torch.uint8)   # 512 MiB, touched
        held = resident_bytes()
        del block
    kept = resident_bytes()
print(held, kept, resident_bytes())
"""


@pytest.mark.slow
def test_freed_memory_stays_for_reuse_until_the_last_loop_ends():
    held, kept, released = map(int, in_a_fresh_process(RELEASE_CHECK).split())
    block = 512 * 2**20
    assert kept > held - block / 4           # freed, but kept in the heap for the next step
    assert released < kept - block * 3 / 4   # given back to the system


def test_resident_memory_reads_the_current_and_peak_sets():
    from falco.benchmarks import resident_bytes
    held = torch.ones(64 * 2**20, dtype=torch.uint8)   # 64 MiB, touched
    now = resident_bytes("VmRSS:")   # read first: the peak read after it covers it, whatever other threads do
    assert resident_bytes("VmHWM:") >= now >= held.numel()
    del held


@pytest.mark.slow
def test_benchmark_runs_both_loops_and_prints_the_ratio(nets, capsys):
    device = torch.device("cpu")
    problem = bench.make_problem(nets, device)
    timings = [bench.measure(name, batch, device, 1, 1, make(nets, problem, batch, OptimConfig()))
               for name, make in (("baseline", bench.baseline), ("ours fp32", bench.ours)) for batch in (1, 2)]
    assert all(t.median > 0 and t.peak > 0 for t in timings)
    for p in nets.generator.parameters():
        assert not p.requires_grad and p.grad is None   # the baseline's trainable weights are frozen again
    bench.print_table(timings, device, 50)
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith(("baseline ", "ours fp32 "))]
    ratios = [next(t for t in row if t.endswith("x")) for row in rows[:4]]
    assert ratios == ["1.00x", "1.00x", f"{timings[0].median / timings[2].median:.2f}x",
                      f"{timings[1].median / timings[3].median:.2f}x"]
    assert any(line.startswith("50-step totals") for line in lines)



def test_an_optimisation_reuses_freed_memory_and_gives_it_back_when_it_ends(tiny_pipeline, astronaut, monkeypatch):
    from falco import allocator
    calls = []
    monkeypatch.setattr(allocator, "release_freed_memory", lambda: calls.append(allocator.reusing_now()) or True)
    assert allocator.reuse_freed_memory() and not allocator.reusing_now()   # the CPU pipeline turned it on
    during = [allocator.reusing_now() for event in tiny_pipeline.anonymize(astronaut, optim=OptimConfig(steps=2))
              if isinstance(event, StepEvent)]
    assert during == [True, True]   # the steps keep their freed memory for the next step
    assert not allocator.reusing_now()
    # given back once the steps ended (and once more after the results), never while they ran
    assert calls and not any(calls)


def test_weights_mapped_from_their_file_go_back_to_the_page_cache_and_read_the_same(tmp_path):
    from safetensors.torch import load_file, save_file

    from falco import allocator
    save_file({"weight": torch.randn(4 * 2**20 // 4)}, tmp_path / "w.safetensors")   # 4 MiB
    mapped = load_file(tmp_path / "w.safetensors")["weight"]
    before = mapped.clone()   # anonymous memory: left alone
    assert allocator.page_out_mapped([before]) == 0
    handed_back = allocator.page_out_mapped([mapped])
    if handed_back == 0:
        pytest.skip("this kernel does not take MADV_PAGEOUT (Linux 5.4+)")
    assert 0 < handed_back <= mapped.numel() * 4
    assert torch.equal(mapped, before)   # read again from the file
