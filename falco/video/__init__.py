"""Clips: tracks of faces and one new identity per person at every m (``anonymize``), every frame rendered, one
decode for all m (``render``); PyAV in and out (``io``); the command line's clips (``clip_folders``); the webcam
(``live``).  The clip code stands on the engine's public steps (falco.pipeline); the engine knows no clip."""
