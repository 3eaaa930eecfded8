"""Time to detect and align every face of a 12-megapixel photo.

    python -m falco.benchmarks.faces [--landmarks shape_predictor_68_face_landmarks.dat]

The photo is a 4x3 grid of the astronaut fixture upscaled to 1000x1000 tiles (4000x3000):
twelve real faces plus the mission patches the HOG detector also fires on.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from PIL import Image

from falco.config import FaceConfig
from falco.faces import FaceAnalyzer, align_face, load_photo, paste_faces, require_usable
from falco.weights import ARTIFACTS
from falco.weights.random_set import packaged_dlib_model

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "align" / "astronaut.png"


def twelve_megapixel_photo(tile_path: Path = FIXTURE, grid: tuple[int, int] = (4, 3), tile: int = 1000) -> bytes:
    """PNG bytes of the tiled test photo."""
    face = Image.open(tile_path).convert("RGB").resize((tile, tile), Image.Resampling.BICUBIC)
    photo = Image.new("RGB", (grid[0] * tile, grid[1] * tile))
    for i in range(grid[0]):
        for j in range(grid[1]):
            photo.paste(face, (i * tile, j * tile))
    buffer = io.BytesIO()
    photo.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--landmarks", type=Path, default=None,
                        help="dlib 68-point model (default: the face_recognition_models copy)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the best is printed")
    args = parser.parse_args()
    config = FaceConfig()
    analyzer = FaceAnalyzer(args.landmarks or packaged_dlib_model(ARTIFACTS["dlib_landmarks"]), config)

    data = twelve_megapixel_photo()
    t_load, photo = best_of(args.repeats, lambda: load_photo(data))
    print(f"photo {photo.width}x{photo.height} ({photo.width * photo.height / 1e6:.1f} MP), "
          f"detector scans at most {config.detect_max_side} px (upsample {config.upsample})")
    print(f"load_photo (PNG decode + convert)   {t_load:7.3f} s")
    t_detect, faces = best_of(args.repeats, lambda: analyzer.detect(photo))
    usable = require_usable(faces)
    print(f"detect + landmarks                  {t_detect:7.3f} s   {len(faces)} detections, {len(usable)} usable")
    timings = {}
    for size in (config.aligned_size, 256):
        timings[size], aligned = best_of(
            args.repeats, lambda: [align_face(photo, faces[i].landmarks, size, config) for i in usable])
        print(f"align {len(usable)} faces at {size:4d}            {timings[size]:7.3f} s   "
              f"({timings[size] / len(usable):.3f} s per face)")
    print(f"detect + align all at {config.aligned_size}         {t_detect + timings[config.aligned_size]:7.3f} s")
    t_paste, _ = best_of(args.repeats, lambda: paste_faces(photo, [(a, a.image) for a in aligned], config))
    print(f"paste {len(aligned)} faces (256) back          {t_paste:7.3f} s")


if __name__ == "__main__":
    main()
