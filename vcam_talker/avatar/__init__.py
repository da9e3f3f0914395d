"""Avatar preparation: load the photo, find the face and its 68 landmarks, frame it,
precompute what an engine needs, and cache the result on disk."""

from vcam_talker.avatar.prepare import prepare_avatar
from vcam_talker.avatar.prepared import PreparedAvatar

__all__ = ["PreparedAvatar", "prepare_avatar"]
