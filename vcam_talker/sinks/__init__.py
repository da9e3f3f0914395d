"""Where frames go: files and streams (ffmpeg) and the virtual camera."""
