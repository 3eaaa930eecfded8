"""FALCO: attribute-preserving face anonymization by latent code optimisation.

Barattin, Tzelepis, Patras, Sebe, "Attribute-preserving Face Dataset Anonymization
via Latent Code Optimization", CVPR 2023.

Data flows one way: photo -> faces -> aligned crops -> W+ -> fake pair ->
optimised W+ -> images -> pasted photo.  Each stage is a module of this package.
"""

__version__ = "0.1.0"
