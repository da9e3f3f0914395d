"""vcam-talker: one portrait and a live voice in, a talking-head virtual webcam out."""

__version__ = "0.1.0"
