"""The error every face finder raises (Haar in faces.py, SCRFD in antelope.py): below both."""


class NoFaceFound(ValueError):
    """The identity image has no detectable frontal face."""
