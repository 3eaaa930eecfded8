"""Measuring a run the way the paper does (issue 14): the judges and the tables.

    judges         the evaluation networks (FaceNet, MTCNN, the FID Inception, the probe's encoder),
                   fetched and loaded once
    facenet        InceptionResnetV1, key-for-key compatible with facenet-pytorch's released state dicts
    mtcnn          MTCNN's three networks and its cascade, as facenet-pytorch runs it
    random_judges  random-noise judges in their files' layouts, for tests and offline runs
"""
