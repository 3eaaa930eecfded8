"""Video speed and plumbing-level quality on a synthetic clip (the test photo panned and zoomed).

    python -m falco.benchmarks.video                          # CPU, tiny and full-size random weights
    python -m falco.benchmarks.video --device cuda --frames 48 --size 1280 720 --sets full

Prints frames per second per stage (tracking, rendering), seconds per person for the identity, and one
e4e pass and one generator pass timed alone, so that the rendering's per-frame cost can be read as
about their sum (plus alignment and paste-back).  Quality figures, which random weights can only check
as plumbing: identity consistency inside the track (mean ArcFace cosine between anonymized frames),
cosine to the original (per frame, mean), and the flicker of the pasted region (mean absolute change
between consecutive frames inside the face box, anonymized vs original).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from falco.allocator import reuse_freed_memory
from falco.bank import FakeBank
from falco.benchmarks.optim import sync
from falco.config import FaceConfig, OptimConfig, VideoConfig
from falco.device import render_batch
from falco.faces import FaceAnalyzer, align_face, ffhq_quad
from falco.faces.recognize import FaceRecognizer
from falco.models import io
from falco.models.networks import Networks
from falco.models.random_weights import random_network
from falco.pipeline import FalcoPipeline
from falco.pixels import to_tensor
from falco.video.anonymize import VideoResult, anonymize_video
from falco.video.io import read_frames
from falco.video.synthetic import pan_zoom_frames, write_clip
from falco.weights.manifest import ARTIFACTS
from falco.weights.random_set import packaged_dlib_model

PHOTO = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"


def random_pipeline(tiny: bool, device: torch.device, bank_size: int = 8) -> FalcoPipeline:
    """A pipeline on random networks, built in memory (no 2 GB set written): a bank of random w and embeddings."""
    nets = {name: random_network(name, tiny=tiny).to(device).eval().requires_grad_(False)
            for name in ("generator", "e4e", "arcface", "farl")}
    mean_w = io.estimate_mean_w(nets["generator"])
    latent_avg = mean_w.expand(nets["e4e"].config["n_styles"], -1).clone()
    g = torch.Generator().manual_seed(0)
    bank = FakeBank(mean_w.cpu() + 0.7 * torch.randn(bank_size, mean_w.shape[-1], generator=g),
                    torch.nn.functional.normalize(torch.randn(bank_size, nets["farl"].config["embed_dim"], generator=g),
                                                  dim=-1), torch.arange(bank_size), {"random": True})
    networks = Networks(device, nets["generator"], mean_w, nets["e4e"], latent_avg.to(device), nets["arcface"],
                        nets["farl"])
    face_config = FaceConfig()
    return FalcoPipeline(networks, bank, FaceAnalyzer(packaged_dlib_model(ARTIFACTS["dlib_landmarks"]), face_config),
                         FaceRecognizer(packaged_dlib_model(ARTIFACTS["dlib_recognition"])), face_config, "random")


def time_passes(pipeline: FalcoPipeline, crop: Image.Image, batch: int, repeat: int = 2) -> tuple[float, float]:
    """Seconds per face of one e4e pass and of one generator pass, at ``batch`` faces per pass (best of repeat)."""
    crops = [crop] * batch
    e4e, gen = [], []
    for _ in range(repeat):
        sync(pipeline.device)
        t = time.perf_counter()
        wplus = pipeline.invert(crops)
        sync(pipeline.device)
        e4e.append(time.perf_counter() - t)
        t = time.perf_counter()
        pipeline.render(wplus)
        sync(pipeline.device)
        gen.append(time.perf_counter() - t)
    return min(e4e) / batch, min(gen) / batch


def quality(pipeline: FalcoPipeline, result: VideoResult, original: list[np.ndarray]) -> dict[str, float]:
    """The plumbing-level figures of the module docstring, for the first track."""
    track = result.tracks[0]
    anonymized = {f.index: f.pixels for f in read_frames(result.path)}
    loss = pipeline.loss(OptimConfig())
    indices = sorted(track.landmarks)
    crops_anon, crops_real, flicker_anon, flicker_real = [], [], [], []
    for i in indices:
        lm = track.landmarks[i]
        crops_anon.append(align_face(Image.fromarray(anonymized[i]), lm, size=256).image)
        crops_real.append(align_face(Image.fromarray(original[i]), lm, size=256).image)
    for a, b in zip(indices, indices[1:]):
        if b != a + 1:
            continue
        quad = ffhq_quad(track.landmarks[b])
        x0, y0 = np.maximum(np.floor(quad.min(0)).astype(int), 0)
        x1, y1 = np.ceil(quad.max(0)).astype(int)
        box = np.s_[y0:y1, x0:x1]
        flicker_anon.append(np.abs(anonymized[b][box].astype(float) - anonymized[a][box]).mean())
        flicker_real.append(np.abs(original[b][box].astype(float) - original[a][box]).mean())
    with torch.no_grad():
        anon = loss.identity_embedding(to_tensor(crops_anon, pipeline.device))
        real = loss.identity_embedding(to_tensor(crops_real, pipeline.device))
    pairs = anon @ anon.T
    n = len(indices)
    consistency = float((pairs.sum() - pairs.diagonal().sum()) / max(n * (n - 1), 1))
    return {"identity consistency (ArcFace cosine between anonymized frames)": consistency,
            "ArcFace cosine to the original (per frame)": float((anon * real).sum(-1).mean()),
            "flicker, anonymized (mean |change| between frames in the face box)": float(np.mean(flicker_anon)),
            "flicker, original": float(np.mean(flicker_real))}


def run(tiny: bool, device: torch.device, frames: int, size: tuple[int, int], steps: int, batch: int,
        refine: int) -> None:
    label = "tiny" if tiny else "full-size"
    t = time.perf_counter()
    pipeline = random_pipeline(tiny, device)
    print(f"\n== {label} random weights on {device} (built in {time.perf_counter() - t:.1f} s); "
          f"clip {frames} frames {size[0]}x{size[1]}, identity {steps} steps, batch {batch}, refine {refine}")
    original = pan_zoom_frames(Image.open(PHOTO), frames, size)
    with tempfile.TemporaryDirectory(prefix="falco-bench-video-") as folder:
        clip = write_clip(Path(folder) / "clip.mkv", original, fps=24)
        config = VideoConfig(batch_frames=batch)
        result = None
        for event in anonymize_video(pipeline, clip, Path(folder) / "out.mkv", optim=OptimConfig(steps=steps),
                                     refine_steps=refine, config=config):
            result = event
        s = result.seconds
        tracks = len(result.tracks)
        print(f"persons tracked: {tracks}")
        print(f"tracking : {frames / s['tracking']:.2f} frames/s ({s['tracking'] / frames * 1000:.0f} ms/frame, "
              "dlib detection + landmarks)")
        print(f"identity : {s['identity'] / max(tracks, 1):.2f} s per person ({steps} steps + setup)")
        print(f"rendering: {frames / s['rendering']:.2f} frames/s ({s['rendering'] / frames * 1000:.0f} ms/frame: "
              "decode, align, e4e, generator, paste, encode)")
        crop = align_face(Image.fromarray(original[0]), result.tracks[0].landmarks[0]).image
        e4e, gen = time_passes(pipeline, crop, batch)
        print(f"per face alone: e4e {e4e * 1000:.0f} ms + generator {gen * 1000:.0f} ms = {(e4e + gen) * 1000:.0f} ms "
              f"(batch {batch})")
        for name, value in quality(pipeline, result, original).items():
            print(f"{name}: {value:.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sets", nargs="+", choices=["tiny", "full"], default=["tiny", "full"])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("W", "H"))
    parser.add_argument("--steps", type=int, default=2, help="identity optimisation steps per person")
    parser.add_argument("--batch", type=int, default=None, help="faces per network pass (default: 2 on a CPU, else 8)")
    parser.add_argument("--refine-steps", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        reuse_freed_memory()
    print(f"falco video benchmark: torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}")
    for name in args.sets:
        run(name == "tiny", device, args.frames, tuple(args.size), args.steps,
            args.batch or VideoConfig().batch_frames or render_batch(device), args.refine_steps)


if __name__ == "__main__":
    main()
