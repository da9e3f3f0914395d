"""Where frames go: files and streams (ffmpeg), the virtual camera, or nowhere (null)."""
