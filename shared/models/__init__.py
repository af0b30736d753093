"""SQLAlchemy models, one module per aggregate."""

from shared.models.article import (
    Article,
    ArticleHistory,
    ArticleSearch,
    ArticleStatus,
    has_status,
)
from shared.models.auth import ApiToken, IdempotencyRecord
from shared.models.events import ConsumedEvent, DeadLetter, OutboxEvent, RedeliveryMark
from shared.models.notify import (
    Channel,
    Delivery,
    DeliveryAttempt,
    DeliveryKind,
    DeliveryStatus,
    Subscription,
    SubscriptionStatus,
    WebhookEndpoint,
)
from shared.models.related import ArticleVector, RelatedItem, RelatedModel
from shared.models.work import DueWork, FailedWork

__all__ = [
    "ApiToken",
    "Article",
    "ArticleHistory",
    "ArticleSearch",
    "ArticleStatus",
    "ArticleVector",
    "Channel",
    "ConsumedEvent",
    "DeadLetter",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryKind",
    "DeliveryStatus",
    "DueWork",
    "FailedWork",
    "IdempotencyRecord",
    "OutboxEvent",
    "RedeliveryMark",
    "RelatedItem",
    "RelatedModel",
    "Subscription",
    "SubscriptionStatus",
    "WebhookEndpoint",
    "has_status",
]
