"""Events: the outbox's readers (subscription relay, broker publisher), Subscriptions and their channels."""
