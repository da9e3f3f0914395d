"""Cutting the audio stream into per-frame windows for the engine."""
