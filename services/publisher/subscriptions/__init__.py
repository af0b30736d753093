"""Email subscriptions: the public API, and the domain the reader's pages share with it."""
