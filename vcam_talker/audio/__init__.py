"""Audio I/O: speech files, the live capture ring, delayed playback, the virtual mic.

PortAudio (sounddevice) is imported only when a stream is opened, so importing this
package works on machines without libportaudio2 (offline renders).
"""

from vcam_talker.audio.capture import AudioCapture, CaptureStats, StreamResampler, downmix, sanitize
from vcam_talker.audio.playback import DelayedPlayback, PlaybackStats
from vcam_talker.audio.ring import AudioRing, RingNotWrittenError, RingOverwrittenError, RingRangeError
from vcam_talker.audio.virtual import VirtualMicResult, setup_virtual_mic

__all__ = [
    "AudioCapture", "AudioRing", "CaptureStats", "DelayedPlayback", "PlaybackStats", "RingNotWrittenError",
    "RingOverwrittenError", "RingRangeError", "StreamResampler", "VirtualMicResult", "downmix", "sanitize",
    "setup_virtual_mic",
]
