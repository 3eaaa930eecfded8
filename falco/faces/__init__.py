"""Photo in, FFHQ-aligned faces out, and results pasted back: the image side of FALCO.

    photo = load_photo(upload)                       # InputImageError on bad input
    faces = FaceAnalyzer(landmarks_path).detect(photo)
    for i in require_usable(faces):                  # NoFaceError when none
        aligned = align_face(photo, faces[i].landmarks)   # 1024x1024 FFHQ crop
    pasted = paste_faces(photo, [(aligned, result), ...])
"""

from .align import AlignedFace, align_face, ffhq_quad
from .detect import DetectedFace, FaceAnalyzer, require_usable
from .io import PhotoSource, load_photo
from .paste import face_mask, paste_faces, paste_into

__all__ = ["AlignedFace", "DetectedFace", "FaceAnalyzer", "PhotoSource", "align_face", "face_mask",
           "ffhq_quad", "load_photo", "paste_faces", "paste_into", "require_usable"]
