"""Time and memory of the optimisation loop: ours against the original FALCO loop's structure.

    python -m falco.benchmarks.optim                            # CPU: batch 1, 3 timed steps
    python -m falco.benchmarks.optim --device cuda --steps 10 --bf16 --skip256 --compile --full-run --accuracy

Full-size networks with random weights (the reference seeding rule; nothing is downloaded),
one real face, W+ rows 3..7 trained.  Each loop runs ``--warmup`` steps, then ``--steps``
timed steps; the table gives the median step time, the peak memory during the run (CUDA:
``max_memory_allocated``; CPU: the process's peak resident set, networks included) and
baseline / this.  Batch 5 is one face at five values of m.

"ours" is ``falco.optimize.optimize_latents`` itself.  The baseline is written here: the
structure of chi0tzp/FALCO's ``anonymize.py`` loop with its ``IDLoss`` and ``AttrLoss``,
on the same networks:
- the real face's ArcFace and FaRL features are recomputed at every step;
- the generator's and FaRL's weights require gradients (only ArcFace is frozen there), and
  the real face's FaRL pass is not detached, so backward runs through it too;
- the full 1024x1024 image is synthesised and then resized for the losses;
- the attribute loss is a Python loop over the 197 tokens, the identity loss one over the batch;
- float32, the allocator left as it is.
Our generator scales activations instead of weights, so the baseline already runs the
cheaper modulation; the original could not batch values of m (one run per m).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from falco.allocator import reuse_freed_memory
from falco.benchmarks import resident_bytes
from falco.config import OptimConfig
from falco.loss import FalcoLoss, LossTerms
from falco.models.arcface import ArcFace
from falco.models.farl import FaRL, farl_preprocess
from falco.models.networks import Networks, load_networks
from falco.models.random_weights import random_network
from falco.optimize import compose_wplus, optimize_latents, start_wplus, step_losses
from falco.weights import fetch_weights

FACE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "align" / "astronaut_face0_1024.png"
FULL_RUN_STEPS = OptimConfig().steps
NETWORKS = ("generator", "arcface", "farl")   # what the loop runs; e4e and the bank play no part
# Variant tokens, joined with "+": fp32 is the exact path as shipped (on CUDA its step is recorded
# once as a CUDA graph and replayed, OptimConfig.cuda_graph); eager switches the recording off.
TOKENS = {
    "fp32": {},
    "eager": {"cuda_graph": False},
    "cl": {"channels_last": True},
    "bf16": {"precision": "bf16", "channels_last": True},
    "skip256": {"loss_on_skip256": True},
    "compile": {"compile": "default"},
    "cudagraphs": {"compile": "reduce-overhead"},   # torch.compile with CUDA graphs
    "nondet": {"deterministic": False},             # cuDNN's fastest algorithms, F.interpolate resampling
}


# --- Networks and problem --------------------------------------------------------------------
# falco.models' Networks, not falco.pipeline's loading: the pipeline imports dlib, which the GPU machine lacks.
def random_networks(device: torch.device) -> Networks:
    """Full-size networks with the reference seeding rule, as in falco.weights' random sets."""
    return Networks(device, **{name: random_network(name).to(device) for name in NETWORKS})


@dataclass(frozen=True)
class Problem:
    real: torch.Tensor         # [1, 3, 1024, 1024] in [-1, 1]
    wplus_real: torch.Tensor   # [1, num_ws, D]
    w_fake: torch.Tensor       # [1, D]


@torch.no_grad()
def make_problem(nets: Networks, device: torch.device, seed: int = 0) -> Problem:
    size = nets.generator.size
    if FACE.is_file():
        face = Image.open(FACE).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        real = torch.from_numpy(np.asarray(face).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    else:
        real = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    z = torch.randn(2, nets.generator.style_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    w = nets.generator.mapping(z)
    wplus = w[:1, None].expand(-1, nets.generator.num_ws, -1).clone()
    return Problem(real.to(device), wplus, w[1:])


def margins_for(batch: int, device: torch.device) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, batch, device=device) if batch > 1 else torch.zeros(1, device=device)


# --- Measuring ----------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory over a block: CUDA allocations, or the process's resident set on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")   # resets VmHWM to the current resident set (Linux)
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = resident_bytes("VmHWM:")


@dataclass
class Timing:
    loop: str
    batch: int
    steps: list[float]     # seconds, timed steps
    cpu: list[float]       # CPU seconds of this process (every thread, user + system) in those steps
    first: float           # the first step (warm-up: allocations, autotuning, compilation)
    setup: float           # before the first step: the real face's features (ours)
    peak: int              # bytes
    load: str              # load average when it ran

    @property
    def median(self) -> float:
        return statistics.median(self.steps)

    def total(self, steps: int) -> float:
        """A run of ``steps`` steps: setup, the first step, then median steps."""
        return self.setup + self.first + (steps - 1) * self.median


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def measure(name: str, batch: int, device: torch.device, warmup: int, steps: int,
            start: Callable[[int], tuple[float, Iterator]]) -> Timing:
    """Time ``next()`` of the step iterator made by ``start(total_steps)`` -> (setup seconds, iterator)."""
    load = load_average()
    with PeakMemory(device) as memory:
        setup, stream = start(warmup + steps)
        times, cpu = [], []
        for _ in range(warmup + steps):
            t, c = time.perf_counter(), time.process_time()
            next(stream)
            sync(device)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        stream.close()
    return Timing(name, batch, times[warmup:], cpu[warmup:], times[0], setup, memory.peak, load)


# --- Our loop ------------------------------------------------------------------------------------
def ours(nets: Networks, problem: Problem, batch: int, config: OptimConfig) -> Callable[[int], tuple[float, Iterator]]:
    def start(total_steps: int):
        device = problem.real.device
        loss = FalcoLoss.for_config(nets.arcface, nets.farl, config)
        t = time.perf_counter()
        # As the pipeline does: the real face's features once, shared by the batch items.
        real = loss.real_features(problem.real).select(torch.zeros(batch, dtype=torch.long, device=device))
        sync(device)
        setup = time.perf_counter() - t
        stream = optimize_latents(nets.generator, loss, real, problem.wplus_real.expand(batch, -1, -1),
                                  problem.w_fake.expand(batch, -1), margins_for(batch, device),
                                  replace(config, steps=total_steps))
        return setup, stream
    return start


# --- The baseline: the original loop's structure ------------------------------------------------
@contextmanager
def trainable(*modules: torch.nn.Module) -> Iterator[None]:
    """Weights that require gradients, as in the original loop; frozen again (and grads dropped) after."""
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def baseline_identity_loss(arcface: ArcFace, image: torch.Tensor, real: torch.Tensor,
                           margins: torch.Tensor) -> torch.Tensor:
    def features(x):   # Resize(256, antialias) + crop + pool to 112, as lib/id_loss.py
        x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
        return arcface(F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], 112))
    real_features = features(real).detach()   # the real face again, every step
    anon_features = features(image)
    return sum(torch.abs(anon_features[i].dot(real_features[i]) - margins[i]) for i in range(len(margins)))


def baseline_attribute_loss(farl: FaRL, image: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    size = farl.config["image_size"]
    real_tokens = farl.tokens(farl_preprocess(real, size))   # not detached, as lib/attr_loss.py
    anon_tokens = farl.tokens(farl_preprocess(image, size))
    return sum(F.l1_loss(anon_tokens[:, i], real_tokens[:, i]) for i in range(real_tokens.shape[1]))


def baseline_steps(nets: Networks, problem: Problem, batch: int, config: OptimConfig,
                   total_steps: int) -> Iterator[None]:
    device = problem.real.device
    real = problem.real.expand(batch, -1, -1, -1)
    wplus_real = problem.wplus_real.expand(batch, -1, -1)
    margins = margins_for(batch, device)
    start, stop = config.trained_rows
    trained = problem.w_fake.expand(batch, -1)[:, None].expand(-1, stop - start, -1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([trained], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [int(f * total_steps) for f in config.lr_milestones], gamma=config.lr_decay)
    with trainable(nets.generator, nets.farl), torch.enable_grad():
        for _ in range(total_steps):
            optimizer.zero_grad()
            image = nets.generator(compose_wplus(wplus_real, trained, config.trained_rows))
            loss = (config.lambda_id * baseline_identity_loss(nets.arcface, image, real, margins)
                    + config.lambda_attr * baseline_attribute_loss(nets.farl, image, real))
            loss.backward()
            optimizer.step()
            scheduler.step()
            yield


def baseline(nets: Networks, problem: Problem, batch: int, config: OptimConfig):
    return lambda total_steps: (0.0, baseline_steps(nets, problem, batch, config, total_steps))


# --- Accuracy of the fast options --------------------------------------------------------------
def gradient_and_terms(nets: Networks, problem: Problem, config: OptimConfig,
                       wplus: torch.Tensor | None = None) -> tuple[torch.Tensor, LossTerms]:
    """Gradient of the total loss in the trained rows at ``wplus`` (default: the start), and the terms."""
    loss = FalcoLoss.for_config(nets.arcface, nets.farl, config)
    real = loss.real_features(problem.real)
    start, stop = config.trained_rows
    if wplus is None:
        wplus = start_wplus(problem.wplus_real, problem.w_fake, config.trained_rows)
    trained = wplus[:, start:stop].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        wplus = compose_wplus(problem.wplus_real, trained, config.trained_rows)
        _, terms = step_losses(nets.generator, loss, real, wplus, torch.zeros(1, device=wplus.device), config)
        grad, = torch.autograd.grad(terms.total.sum(), trained)
    return grad, terms.detach()


def final_wplus(nets: Networks, problem: Problem, config: OptimConfig) -> torch.Tensor:
    loss = FalcoLoss.for_config(nets.arcface, nets.farl, config)
    real = loss.real_features(problem.real)
    *_, last = optimize_latents(nets.generator, loss, real, problem.wplus_real, problem.w_fake,
                                torch.zeros(1, device=problem.real.device), config)
    return last.wplus


def accuracy(nets: Networks, problem: Problem, variants: list[str], steps: int) -> list[str]:
    """Each variant against the exact float32 path: losses and gradient at the start, and after ``steps`` steps."""
    exact = OptimConfig(steps=steps)
    grad0, terms0 = gradient_and_terms(nets, problem, exact)
    end0 = final_wplus(nets, problem, exact)
    _, end_terms0 = gradient_and_terms(nets, problem, exact, end0)
    moved = (end0 - start_wplus(problem.wplus_real, problem.w_fake, exact.trained_rows)).norm()
    lines = [(f"exact fp32 at the start: identity cosine {terms0.identity_cosine.item():+.4f}, "
              f"attribute {terms0.attribute.item():.4f}, total {terms0.total.item():.4f}; after {steps} steps: "
              f"cosine {end_terms0.identity_cosine.item():+.4f}, total {end_terms0.total.item():.4f}"),
             (f"{'variant':<22}{'d cos':>9}{'d attr %':>10}{'d total %':>10}{'grad cos':>10}{'|g|/|g0|':>10}"
              f"{'end: dW/moved':>15}{'end total (exact)':>19}")]
    for name in variants:
        config = replace(variant_config(name), steps=steps)
        grad, terms = gradient_and_terms(nets, problem, config)
        end = final_wplus(nets, problem, config)
        _, end_terms = gradient_and_terms(nets, problem, exact, end)   # the result judged by the exact losses
        cosine = F.cosine_similarity(grad.flatten(), grad0.flatten(), dim=0).item()
        lines.append(
            f"{name:<22}{(terms.identity_cosine - terms0.identity_cosine).item():>+9.4f}"
            f"{100 * ((terms.attribute - terms0.attribute) / terms0.attribute).item():>+10.2f}"
            f"{100 * ((terms.total - terms0.total) / terms0.total).item():>+10.2f}"
            f"{cosine:>10.4f}{(grad.norm() / grad0.norm()).item():>10.3f}"
            f"{((end - end0).norm() / moved).item():>15.3f}{end_terms.total.item():>19.4f}")
    return lines


# --- Command line ----------------------------------------------------------------------------------
def variant_config(name: str) -> OptimConfig:
    fields: dict = {}
    for token in name.split("+"):
        if token not in TOKENS:
            raise SystemExit(f"unknown variant token {token!r}; expected some of {list(TOKENS)} joined by '+'")
        fields.update(TOKENS[token])
    return OptimConfig(**fields)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def print_table(timings: list[Timing], device: torch.device, full_steps: int) -> None:
    base = {t.batch: t for t in timings if t.loop == "baseline"}
    unit, scale = ("ms", 1e3) if device.type == "cuda" else ("s", 1.0)
    # On a shared CPU the process's CPU time per step moves less with other load than wall time does.
    print(f"\n{'loop':<24}{'batch':>6}{f'step {unit} (median)':>20}{'min':>9}{'first':>9}{'cpu s':>8}"
          f"{'peak memory':>14}{'baseline/this':>15}   load avg")
    for t in timings:
        ratio = f"{base[t.batch].median / t.median:.2f}x" if t.batch in base else "-"
        print(f"{t.loop:<24}{t.batch:>6}{t.median * scale:>20.3f}{min(t.steps) * scale:>9.3f}{t.first * scale:>9.3f}"
              f"{statistics.median(t.cpu):>8.2f}{gib(t.peak):>14}{ratio:>15}   {t.load}")
    print(f"\n{full_steps}-step totals (setup + first step + {full_steps - 1} x median), and batch 5 / batch 1:")
    by_loop: dict[str, dict[int, Timing]] = {}
    for t in timings:
        by_loop.setdefault(t.loop, {})[t.batch] = t
    for loop, runs in by_loop.items():
        totals = ", ".join(f"batch {b}: {runs[b].total(full_steps):.2f} s" for b in sorted(runs))
        ratio = (f"; batch 5 / batch 1 per step {runs[5].median / runs[1].median:.2f}x" if {1, 5} <= runs.keys()
                 else "")
        print(f"  {loop:<22} {totals}{ratio}")
    if 1 in base and 5 in base:
        print(f"  (the original loop took one m per run: five m values = 5 x batch 1 = "
              f"{5 * base[1].total(full_steps):.2f} s)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m falco.benchmarks.optim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights", default=None,
                        help="a weights folder in Hub layout or Hub repo id instead of random weights "
                             "(e.g. the real networks)")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch sizes, i.e. values of m (default: 1 5 on CUDA; 1 on the CPU, where the exact "
                             "path at batch 5 needs about 25 GB of RAM)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per loop (default: 10 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default: 3 CUDA, 1 CPU)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast + channels-last")
    parser.add_argument("--skip256", action="store_true", help="also time losses on the 256 skip output")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (with --bf16: of bf16 too)")
    parser.add_argument("--variants", nargs="+", default=[],
                        help=f"more of our variants, tokens joined by '+': {', '.join(TOKENS)} (e.g. bf16+skip256)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-exact", action="store_true", help="leave out our exact fp32 loop (only the variants)")
    parser.add_argument("--no-reuse", action="store_true",
                        help="leave the CPU allocator as it is for our loop too (falco.allocator.reuse_freed_memory)")
    parser.add_argument("--full-run", action="store_true",
                        help="also time complete runs of one face, end to end, per variant")
    parser.add_argument("--full-run-steps", type=int, default=FULL_RUN_STEPS, help="steps of a complete run")
    parser.add_argument("--accuracy", action="store_true", help="compare the variants with the exact fp32 path")
    parser.add_argument("--accuracy-steps", type=int, default=None,
                        help="steps of the accuracy runs (default 10 CUDA, 2 CPU)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (10 if cuda else 3)
    batches = args.batch or ([1, 5] if cuda else [1])
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    variants = ([] if args.no_exact else ["fp32"]) + [v for flag, v in ((args.bf16, "bf16"), (args.skip256, "skip256"))
                                                       if flag]
    if args.compile:
        variants += ["compile"] + (["bf16+compile"] if args.bf16 else [])
    variants += [v for v in args.variants if v not in variants]
    configs = {v: variant_config(v) for v in variants}

    threads = f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads"
    machine = torch.cuda.get_device_name(device) if cuda else threads
    print(f"falco optimisation benchmark: torch {torch.__version__}, {platform.machine()}, {machine}")
    print(f"load average before: {load_average()}; warm-up {warmup}, timed steps {steps}, batches {batches}")
    t = time.perf_counter()
    nets = (load_networks(fetch_weights(args.weights, names=NETWORKS), device, NETWORKS) if args.weights
            else random_networks(device))
    problem = make_problem(nets, device)
    print(f"networks {'loaded from ' + args.weights if args.weights else 'built with random weights'} "
          f"in {time.perf_counter() - t:.1f} s")

    timings: list[Timing] = []
    # The baseline first: from here on our loops reuse freed memory (falco.allocator.reusing).
    if not args.no_baseline:
        for batch in batches:
            loop = baseline(nets, problem, batch, OptimConfig())
            timings.append(measure("baseline", batch, device, warmup, steps, loop))
            print(f"  baseline batch {batch}: {timings[-1].median:.3f} s/step", flush=True)
    if not cuda and not args.no_reuse:
        reuse_freed_memory()
    for name, config in configs.items():
        for batch in batches:
            timings.append(measure(f"ours {name}", batch, device, warmup, steps, ours(nets, problem, batch, config)))
            print(f"  ours {name} batch {batch}: {timings[-1].median:.3f} s/step", flush=True)
    print_table(timings, device, args.full_run_steps)

    if args.full_run:
        n = args.full_run_steps
        print(f"\ncomplete {n}-step runs of one face (ours, end to end: real features + every step):")
        for name, config in configs.items():
            setup, stream = ours(nets, problem, 1, config)(n)
            t = time.perf_counter()
            for _ in stream:
                pass
            sync(device)
            print(f"  ours {name:<20} {setup + time.perf_counter() - t:.2f} s")
    if args.accuracy:
        accuracy_steps = args.accuracy_steps or (10 if cuda else 2)
        weights = f"weights {args.weights}" if args.weights else "random weights"
        print(f"\naccuracy against the exact fp32 path (one face, m = 0; {weights}; {accuracy_steps} steps):")
        for line in accuracy(nets, problem, [v for v in variants if v != "fp32"], accuracy_steps):
            print("  " + line)
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
