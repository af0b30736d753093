"""Pressroom's common package: configuration, database, event contracts, the Celery factory."""
