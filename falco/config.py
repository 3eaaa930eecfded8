"""Every tunable default of the project, in one place.

Modules take these dataclasses (or their fields) as arguments; nothing else in the
package hard-codes a method default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# --- Weights on the Hugging Face Hub ---------------------------------------------
# The Hub repo the Space downloads from.  FALCO_WEIGHTS_REPO (or the CLI's
# --weights) overrides it; a local folder path can stand in for the repo.
DEFAULT_WEIGHTS_REPO = "falco-space/falco-weights"
WEIGHTS_REPO_ENV = "FALCO_WEIGHTS_REPO"
# Where a set prepared from the official checkpoints is cached when no published set exists
# (default: a folder under HF_HOME, see falco.weights.prepare).
PREPARED_WEIGHTS_ENV = "FALCO_PREPARED_WEIGHTS"
# A Space's persistent storage: when this folder is writable, the Hugging Face cache (HF_HOME) and the prepared set
# are kept there unless the environment names other places, so a restart finds them (falco.weights.storage).
# FALCO_PERSISTENT_ROOT moves it (tests use a temporary folder).
DEFAULT_PERSISTENT_ROOT = "/data"
PERSISTENT_ROOT_ENV = "FALCO_PERSISTENT_ROOT"
# Set on a Hugging Face Space, whose disk (but persistent storage) is wiped on every restart.
SPACE_ID_ENV = "SPACE_ID"
# Fakes the app's bank grows to while the server is idle (falco.ui.grower; 0: it does not grow); default
# BankConfig.size.
BANK_GROW_TO_ENV = "FALCO_BANK_GROW_TO"


def weights_source() -> str:
    return os.environ.get(WEIGHTS_REPO_ENV, DEFAULT_WEIGHTS_REPO)


# --- Faces -----------------------------------------------------------------------
@dataclass(frozen=True)
class FaceConfig:
    aligned_size: int = 1024          # FFHQ resolution
    # Long side of the image the HOG detector scans, dlib's upsampling included: a photo whose
    # long side * 2**upsample exceeds it is resized to it and scanned once (bounded cost and memory).
    # 8192 scans photos up to 4096 px (4K, a 12 MP phone photo) at full resolution with one upsample,
    # exactly as the reference scan: no window or tile re-detection reproduces that scan's rectangles
    # (its HOG grid depends on the whole image's size), so a smaller bound moves the landmarks.
    # Cost on a 2-core CPU: README "How it works".
    detect_max_side: int = 8192
    cnn_detect_max_side: int = 2048   # the same bound for the CNN detector, many times dearer per pixel
    upsample: int = 1                 # dlib detector upsampling steps for photos that fit
    use_cnn_detector: bool = False
    min_face_size: int = 64           # side of the FFHQ crop (quad) in photo pixels below which a face is too small
    # Below this detector score a detection is reported but not usable: the HOG detector
    # fires on round textured things (badges, patches) at 0..0.2, real frontal faces score ~1.
    min_detector_score: float = 0.3
    # The quad warp runs at this multiple of the output size, then LANCZOS-downscales.  FFHQ
    # always uses 4 (4096 for 1024); None uses just enough not to alias, ceil(crop / output)
    # capped at 4, which is 16x cheaper for faces smaller than the output and stays within
    # ~0.5 grey levels RMS of FFHQ's result.
    transform_oversample: int | None = None
    max_image_pixels: int = 80_000_000  # larger inputs are refused (decompression bombs)
    # Paste-back mask, as fractions of the aligned image side: the landmark hull grows up by
    # `paste_forehead` * eye-to-mouth, is dilated by `paste_dilate` and blurred by `paste_feather`.
    paste_forehead: float = 0.5
    paste_dilate: float = 0.04
    paste_feather: float = 0.025
    # Aligned inputs (FFHQ, CelebA-HQ crops; FalcoPipeline.anonymize(aligned=True)) skip detection, alignment and
    # paste-back; dlib still finds the crop's landmarks, on a copy of this side, to check that the crop is aligned
    # (an FFHQ crop's face spans about half of it: ~128 px here, well above dlib's 80 px window).
    aligned_check_size: int = 256
    # An input looks aligned when aligning it again would move no corner of the crop by more than this fraction of
    # its side (falco.faces.alignment_offset).  Measured on the test photo's FFHQ crop (at 256, 512 and 1024 px):
    # 0.005-0.007, dlib's landmark noise; the crop shifted by 5%, 10%, 20% of its side: 0.05, 0.10, 0.20; framed at
    # 0.9x / 1.1x the FFHQ scale: 0.08 / 0.07, at 0.8x / 1.25x: 0.17 / 0.14.  CelebA-HQ crops follow another recipe
    # (Karras et al. 2018) that frames faces a little differently, hence a bound far above the noise: it flags a
    # face off the FFHQ place by a tenth of the crop, or off its scale by about a fifth.
    aligned_max_offset: float = 0.1


# --- Optimisation (paper defaults) ------------------------------------------------
# m, the target identity cosine, belongs to a run, not to the optimisation's settings: a run names its m values
# (photos: ``margins``, every face at every m in one batch; clips: ``margins`` or ``margin``), and records them once.
# This is the m of a run that names none.
DEFAULT_MARGIN = 0.0


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 50
    lr: float = 0.01
    lr_decay: float = 0.8
    lr_milestones: tuple[float, ...] = (0.75, 0.90)   # fractions of `steps`
    lambda_id: float = 10.0
    lambda_attr: float = 0.1
    trained_rows: tuple[int, int] = (3, 8)              # W+ rows [start, stop) that are optimised
    seed: int = 0                                       # seeds everything random in a run (the fake draw)
    preview_every: int = 5                              # stream a preview every k steps
    preview_size: int = 256                             # previews' side (downscaled; also the app's live-strip tile)
    loss_on_skip256: bool = False                       # losses on the 256 skip output instead of 1024
    deterministic: bool = True                          # bit-identical reruns on CUDA too (see falco.optimize)
    # Speed (README "Speed"): none changes what is computed beyond floating-point rounding.
    precision: str = "fp32"                             # "bf16": bfloat16 autocast for the networks' steps
    channels_last: bool = False                         # NHWC activations (tensor-core convolutions prefer them)
    compile: str | None = None                          # torch.compile mode for the steps ("default",
                                                        # "reduce-overhead": + CUDA graphs); None: eager
    # CUDA: record a step's forward + backward once as a CUDA graph and replay it (launch-bound at
    # batch 1); used once a replay has reproduced an eager step, else the run goes on eagerly.
    # torch.compile (`compile`) takes precedence; the CPU always runs eagerly.
    cuda_graph: bool = True
    # Batch items (faces x m values) per forward + backward pass; the passes of a step run one after the
    # other, so memory holds one pass's activations (~3 GiB per item at 1024 on the CPU).  None: 1 on the
    # CPU, where batching gains nothing (5 items cost 5.3x one) and a large batch could exhaust the RAM;
    # every item at once elsewhere (on an H100, 5 items cost 1.7x one).
    max_batch: int | None = None


# --- Rendering and memory ------------------------------------------------------------
# Images per generator call outside the optimisation (inversions, fakes, results, a bank's fakes, a clip's frames).
# On the CPU one 1024 px image's activations raise the peak by about 0.9 GiB, two by 2.0, five by about 5.5
# (python -m falco.benchmarks.memory), and a batch saves no time there, so the CPU renders one at a time.
CPU_RENDER_BATCH = 1
GPU_RENDER_BATCH = 8


# --- Fake bank ----------------------------------------------------------------------
@dataclass(frozen=True)
class BankConfig:
    truncation_psi: float = 0.7
    size: int = 60_000                 # the paper's bank size
    # A set prepared on a CPU gets this many fakes, the first rows of the full bank: a fake took about 4 s on the
    # 2-core development CPU and 10-12 s while other jobs shared its cores (full-size networks), so a first start
    # spends about 3 minutes on them, up to 8 on a shared machine (README "First start").  A GPU builds `size`.
    cpu_size: int = 40
    seed: int = 0
    k_nearest: int = 1                 # >1: draw the fake among the k nearest ("another fake")
    chunk_rows: int = 256              # rows per resumable part file while building
    cpu_chunk_rows: int = 8            # ... on a CPU, where a fake takes seconds (a part every minute or so)
    render_batch: int | None = None    # images per generator call while building; None: the device's (above)
    # Growing a bank beyond a prepared set's rows (falco.weights.growth): the last part file is rewritten every
    # chunk (cpu_chunk_rows on a CPU), and a new one starts at this many rows, so 60,000 fakes are some 60 files.
    growth_part_rows: int = 1024


# PNG files written (downloads, outputs, dataset rows): zlib level 3 writes a 1024 px face in about a third of the
# default level 6's time (0.17 s against 0.47 s on one core) for files about 12% larger; a run writes a dozen.
PNG_COMPRESS_LEVEL = 3


# --- Batch command line ----------------------------------------------------------------
@dataclass(frozen=True)
class CliConfig:
    # As the app: an animated GIF or multi-page TIFF is read (and written) as its first frame.
    image_extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
    jpeg_quality: int = 95
    # Dataset runs (--dataset) keep each anonymized image in this format (lossless: the dataset is for training and
    # evaluation, and its original images were compressed once already).
    dataset_image_suffix: str = ".png"
    dataset_image_column: str = "image"          # --image-column's default (else the only Image column)
    dataset_split: str = "train"                 # --split's default


# --- Baselines: the other anonymizers of the comparison table (falco.baselines) ---------
# The command line's --method: FALCO, three classical filters of the face region, and FALCO's pairing without its
# optimisation.  The first is the default.
METHODS = ("falco", "blur", "pixelate", "mask", "nearest-fake")
CLASSICAL_METHODS = ("blur", "pixelate", "mask")   # dlib alone: no network of the weight set is built


@dataclass(frozen=True)
class BaselineConfig:
    # Sizes are fractions of the FFHQ-aligned crop's side (the face spans about half of it), so a filter hides a
    # face the same at every photo size.  At 0.04 (41 px on a 1024 crop) eyes, nose and mouth blur into one blob.
    blur_sigma: float = 0.04
    pixelate_cells: int = 16                     # blocks across the crop: about 8 across the face
    mask_fill: tuple[int, int, int] = (128, 128, 128)   # mid grey: no colour of its own in colour statistics


# dlib's face-recognition model calls two faces the same person below this distance.
DLIB_SAME_PERSON_DISTANCE = 0.6


# --- Web app (app.py / falco/ui/) ------------------------------------------------------
@dataclass(frozen=True)
class ZeroGpuConfig:
    """The GPU time a run asks ZeroGPU for (falco.ui.gpu_slots): its expected seconds x ``margin``, at least
    ``floor_s``, never over ``cap_s``; a run expected to need more than ``cap_s`` is refused before it asks.

    ZeroGPU refuses a visitor whose quota left is under the requested duration (even when the run would take
    less) and serves short requests sooner, so each run asks for what its work needs.  The costs are for the
    full-size networks on a ZeroGPU slice, half an H200 (60 of its 132 SMs: the `spaces` package's configs.json),
    from the figures of README "Speed"; none was measured on ZeroGPU itself."""
    # One call may ask for at most this: public Space discussions report 120 s for visitors who are not logged in
    # (and refusals of 240-300 s requests even for paying ones); `spaces` refuses more as "larger than the maximum".
    cap_s: int = 120
    floor_s: int = 20             # start-up costs vary (a fresh worker, a busy host): no slot shorter than this
    margin: float = 1.5           # the costs below are estimates
    # The worker's start (`spaces` forks it and moves the ~2 GB of weights onto the GPU) and the CUDA graph's
    # recording (about five steps): not measured, an estimate.
    start_s: float = 10.0
    # One optimisation step of one item (a face at an m): 71 ms on an H100 (eager fp32, batch 1), x2 for the slice.
    step_s: float = 0.15
    # Each further item of a step's batch: (120 - 71) / 4 = 12 ms on an H100 (batch 5: 120 ms), x2 for the slice.
    step_item_s: float = 0.025
    # Per face, outside the steps: e4e inversion, the bank's nearest fake, the result at 1024 and dlib's verdict
    # (on the CPU): an estimate.
    face_s: float = 1.0
    # Faces a run is sized for when its photo's faces are not known yet (an API call with every face).
    assumed_faces: int = 2
    # Clips (one call, the whole clip: the Video tab says so and refuses what one call cannot do).  Per frame and
    # megapixel, the work on the CPU: dlib's detection and tracking (3.4-3.7 frames/s at 512x512, README "Clips")
    # and decoding, alignment, paste-back and encoding (0.2 s per 512x512 frame: 410 ms less the networks' 204 ms).
    frame_megapixel_s: float = 1.9
    # Per frame and person: e4e + the generator at batch 1 on the GPU, about a step's forward (an estimate).
    frame_face_s: float = 0.1
    clip_persons: int = 1         # persons a clip's slot is sized for: each further one makes it longer
    clip_reference_size: tuple[int, int] = (640, 360)   # the frame size the Video tab states its limit for


@dataclass(frozen=True)
class AppConfig:
    queue_max_size: int = 16                     # runs waiting beyond this are refused ("queue full")
    # After a click, the progress box looks for the run in line this long: one cancelled before it joined
    # (a new photo) stops the looking.  Joining takes milliseconds; a busy server's event loop, more.
    queue_join_s: float = 10.0
    compare_margins: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    max_margins: int = 8                         # m values in one batch (GPU memory grows with it)
    cpu_optim: OptimConfig = OptimConfig(steps=10, preview_every=1, loss_on_skip256=True)
    another_fake_k: int = 8                      # "another fake" draws among this many nearest fakes
    zerogpu: ZeroGpuConfig = ZeroGpuConfig()     # the GPU time each run asks for on a ZeroGPU Space
    max_upload_bytes: int = 25 * 1024 * 1024
    max_steps: int = 200                         # the Steps slider's top, and the API's limit
    cache_sweep_s: tuple[int, int] = (600, 3600)  # every 10 min, delete served files older than 1 h


# --- A shared Space (python -m falco.space deploy | check; README "Deploy as a Space") -----------------------
@dataclass(frozen=True)
class SpaceConfig:
    # Waiting for the Space to run: a first build installs torch, dlib and Gradio (minutes), a restart less.
    runtime_timeout_s: float = 1800.0
    # Then for its models: a first start without a published set prepares one (3 to 8 min on a 2-core CPU).
    ready_timeout_s: float = 1200.0
    poll_s: float = 5.0
    http_timeout_s: float = 60.0
    # The check's run of the example photo: few steps, so that it says "works" in seconds on a GPU, a minute on a CPU.
    check_steps: int = 3
    check_margins: str = "0"


# --- Evaluation (python -m falco.evaluate; README "Evaluation") ---------------------------
@dataclass(frozen=True)
class PaperFigures:
    """One row of the paper's CelebA-HQ table (FALCO, CVPR 2023); None where the paper gives no figure."""
    margin: float
    fid: float | None = None
    detection_dlib: float | None = None        # % of anonymized images with a face found
    detection_mtcnn: float | None = None
    reid_casia: float | None = None            # % re-identified by FaceNet trained on CASIA-WebFace
    reid_vgg: float | None = None              # ... and on VGGFace2
    attribute_accuracy: float | None = None    # the paper's own attribute classifier (not public)


# The paper's CelebA-HQ figures, printed beside a run's for reference.
PAPER_CELEBAHQ: tuple[PaperFigures, ...] = (
    PaperFigures(margin=0.0, fid=29.93, detection_dlib=100.0, detection_mtcnn=100.0, reid_casia=2.80,
                 reid_vgg=1.67, attribute_accuracy=0.8181),
    PaperFigures(margin=0.9, fid=27.58, detection_mtcnn=100.0, reid_casia=3.41, reid_vgg=1.76,
                 attribute_accuracy=0.83),
)


@dataclass(frozen=True)
class EvaluationConfig:
    crop_size: int = 256               # side of the aligned face crops the identity judges see
    # FaceNet was trained on tight MTCNN crops: it sees this box of the FFHQ crop (in pixels of a 256 crop, scaled
    # to crop_size), ArcFace's interior (falco.models.arcface's ID_CROP_ROWS / ID_CROP_COLS), not the loose framing.
    facenet_box: tuple[int, int, int, int] = (32, 35, 220, 223)   # left, top, right, bottom
    mtcnn_min_probability: float = 0.9   # an MTCNN box below this is not a detection
    probe_test_fraction: float = 0.2   # originals held out of the probe's training (its "Original" row)
    probe_max_iter: int = 2000         # LogisticRegression's iterations
    seed: int = 0                      # the probe's train/test split
    # dlib scans photos up to this long side (FaceConfig.detect_max_side, for the evaluation): a 1024 CelebA-HQ
    # image is scanned at 1024 without upsampling (its face is ~500 px), 4x cheaper than the app's 2048.
    detect_max_side: int = 1024
    # InceptionV3 features FID compares: 2048 (the pool features every published FID uses); torchmetrics offers 64,
    # 192 and 768 for quick checks (far cheaper: the 2048-d covariance's eigenvalues take ~20 s on a 2-core CPU).
    fid_features: int = 2048
    examples: int = 6                  # originals shown, with each m, in report.html's grid
    example_side: int = 160            # their side in pixels
    # Clips (falco.evaluate.clips): a tracked face whose box, both shrunk to clip_unchanged_side pixels square (which
    # averages a codec's fine noise away), differs from the original's by at most clip_unchanged_difference levels
    # (mean absolute, 0-255) was left unanonymized.  Measured: re-encoding alone (H.264, CRF 18 / 28) moves the shrunk
    # box by at most 1.4 / 2.0 levels (2.9 / 4.7 unshrunk); another face there (the original mirrored) by 41.
    clip_unchanged_side: int = 16
    clip_unchanged_difference: float = 4.0


# --- Video (falco/video/) ----------------------------------------------------------------
@dataclass(frozen=True)
class VideoConfig:
    # Files the command line treats as clips (in a folder tree too); the output keeps the input's container.
    extensions: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
    max_seconds: float | None = None          # the library and the command line take any length
    app_max_seconds: float = 20.0             # a shared Space: longer clips are refused, as the page says
    app_cpu_max_seconds: float = 3.0          # on a CPU a frame takes seconds
    max_frame_pixels: int = 3840 * 2160       # 4K: larger frames are refused
    # Tracking: detect on every k-th frame; between detections dlib's correlation tracker follows each face.
    detect_every: int = 1
    link_iou: float = 0.3                     # a detection continues the track whose last box it overlaps this much
    # Frames a track may miss before a detection can no longer continue it; the frames missed inside such a gap
    # are anonymized all the same (a clip: landmarks interpolated between the detections; the webcam: the last ones).
    track_gap: int = 15
    # A person who left and returns rejoins their track when dlib's recogniser finds them nearer than this.
    rejoin_distance: float = 0.5
    min_track_frames: int = 1                 # shorter tracks are left as they are
    # One-Euro filter on the landmarks (Casiez et al. 2012): jitter at rest is cut by min_cutoff (Hz),
    # fast motion lowers the lag through beta.
    smooth_min_cutoff: float = 1.0
    smooth_beta: float = 0.05
    smooth_d_cutoff: float = 1.0
    # Faces per e4e + generator pass when rendering; None: the device's render batch (CPU_RENDER_BATCH above).
    batch_frames: int | None = None
    # Side of each frame's aligned crop; None: e4e's input (256), aligned straight to it (antialiased) instead of
    # to 1024 and resized, which cost more than e4e itself per frame on a CPU.
    align_size: int | None = None
    queue_frames: int = 16                    # frames decoded ahead of the networks and waiting to be encoded
    refine_steps: int = 0                     # >0: per-frame optimisation steps warm-started from the offset
    # Encoding: None keeps the input's codec where this build of PyAV can write it, else the container's default.
    video_codec: str | None = None
    app_video_codec: str = "libx264"          # what browsers play, in .mp4
    crf: int = 18                             # x264/x265 quality (visually lossless)
    container_formats: tuple[tuple[str, str], ...] = (
        (".mp4", "mp4"), (".m4v", "mp4"), (".mov", "mov"), (".mkv", "matroska"), (".webm", "webm"), (".avi", "avi"))
    live_build_seconds: float = 1.0           # webcam: frames gathered before each person's identity is built
    live_steps: int = 10                      # webcam: optimisation steps per person
