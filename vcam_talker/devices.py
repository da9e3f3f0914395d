"""Listing audio devices (PortAudio) and v4l2 video devices."""

from __future__ import annotations

from pathlib import Path

from vcam_talker.errors import DeviceError


def list_audio_devices() -> list[dict]:
    try:
        import sounddevice as sd
    except OSError as exc:  # libportaudio2 missing
        raise DeviceError(f"PortAudio is not available ({exc}); install libportaudio2") from None
    default_in, default_out = sd.default.device
    out = []
    for i, d in enumerate(sd.query_devices()):
        out.append({"index": i, "name": d["name"], "inputs": d["max_input_channels"],
                    "outputs": d["max_output_channels"], "rate": d["default_samplerate"],
                    "default": i in (default_in, default_out)})
    return out


def list_video_devices(sysfs: Path = Path("/sys/class/video4linux")) -> list[dict]:
    """v4l2 devices; v4l2loopback ones are recognised by their driver link or name."""
    out = []
    if not sysfs.is_dir():
        return out
    for dev in sorted(sysfs.iterdir(), key=lambda p: (len(p.name), p.name)):
        name = (dev / "name").read_text().strip() if (dev / "name").exists() else dev.name
        driver = ""
        try:
            driver = (dev / "device" / "driver").resolve().name
        except OSError:
            pass
        loop = "loopback" in driver or "v4l2loopback" in name.lower() or "VCam" in name
        out.append({"path": f"/dev/{dev.name}", "name": name, "loopback": loop})
    return out
