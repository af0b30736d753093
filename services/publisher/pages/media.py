"""What an article's ``media`` URL holds, as the pages and feeds tell readers: a video (played
on the page, an enclosure in the feed) or otherwise a picture."""

from __future__ import annotations

import re

VIDEO = re.compile(r"\.(mp4|webm|ogv|m3u8)(\?|\Z)", re.IGNORECASE)
VIDEO_TYPES = {
    "mp4": "video/mp4",
    "webm": "video/webm",
    "ogv": "video/ogg",
    "m3u8": "application/vnd.apple.mpegurl",  # an HLS playlist
}


def video_type(url: str | None) -> str | None:
    """The media type of the video at ``url``, or None when it is no video."""
    found = VIDEO.search(url or "")
    return VIDEO_TYPES[found[1].lower()] if found else None
