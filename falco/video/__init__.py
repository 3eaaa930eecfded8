"""Clips: tracks of faces, one new identity per person, every frame rendered (``anonymize``); PyAV in and out
(``io``); the command line's clips (``files``); the webcam (``live``)."""
