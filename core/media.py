"""The media a request's input may be: the one list, read by the SDK and CLI (what they upload), the
api (what an upload session calls a video), the upload events (a video object or a photo folder)
and the frames stage (what it decodes)."""

from __future__ import annotations

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
"""Photo files the frames stage reads (Pillow decodes every one, EXIF orientation applied)."""
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".3gp"})
"""Video files the frames stage decodes (PyAV / FFmpeg)."""
VIDEO_CONTENT_TYPES = {".mp4": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
                       ".mkv": "video/x-matroska", ".avi": "video/x-msvideo", ".ts": "video/mp2t"}
"""The content type the api stores a video under, by the container its first bytes show."""


def is_photo(name: str) -> bool:
    """Whether a file name is a photo the frames stage reads (by its extension, any case)."""
    return name.lower().endswith(PHOTO_EXTENSIONS)


def is_video(name: str) -> bool:
    """Whether a file name is a video the frames stage decodes (by its extension, any case)."""
    return name.lower().endswith(tuple(VIDEO_EXTENSIONS))
