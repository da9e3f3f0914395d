"""The classic engine: audio features → motion model → landmark-driven warp. CPU, offline."""
