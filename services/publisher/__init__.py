"""The publisher: the HTTP API editors use, the reader pages, and the outbox relay after commit."""

from services.publisher.app import create_app

__all__ = ["create_app"]
