"""Weights: where a weight set comes from, which bytes it is, and how one is made.

    manifest    the artifacts of a set and the manifest of their sizes and sha256 hashes; checks
    hub         a local folder, or a Hub repo fetched at a pinned commit and verified
    random_set  random-noise sets in the exact layout (tests, offline smoke runs)
    model_card  the README.md of a published set
    official    where each official checkpoint is downloaded from
    assemble    steps shared by publish and prepare: dlib files, the bank, manifest and model card
    prepare     a set built on this machine from the official checkpoints when none is published
    growth      a prepared set's fake bank grown beside it, in resumable parts, yielding to visitors' runs
    storage     the cache and the prepared set kept on a Space's persistent storage (/data)
    licences    each file's origin and licence, the one definition
    publish     the official checkpoints converted, checked and uploaded
    __main__    the command line: python -m falco.weights fetch | random | prepare | publish
"""

from falco.weights.hub import WeightPaths, WeightSource, fetch_weights, parse_source
from falco.weights.manifest import ARTIFACTS, MANIFEST_NAME, Artifact, Manifest

__all__ = ["ARTIFACTS", "MANIFEST_NAME", "Artifact", "Manifest", "WeightPaths", "WeightSource", "fetch_weights",
           "parse_source"]
