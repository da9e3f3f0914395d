"""Our own implementation of SadTalker's networks (audio → 3DMM motion → keypoint-driven renderer)."""
