"""The publisher: the HTTP API editors use, and the reader pages."""

from services.publisher.app import create_app

__all__ = ["create_app"]
