"""The ways a notification leaves Pressroom, one module per channel: ``email`` and ``webhook``.

Each channel is a small interface (``Mailer``, ``WebhookTransport``) with a real implementation
and a null one, so the fan-out and its tests never need to know how a message travels.
"""
