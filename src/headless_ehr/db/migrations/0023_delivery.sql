-- Rest-hook delivery (events/delivery.py): each node looks for subscriptions due for a
-- delivery whenever the relay adds notifications; this keeps that look to the live
-- rest-hook subscriptions however many websocket, off or error ones there are.
CREATE INDEX subscription_state_due ON subscription_state (next_attempt_at)
    WHERE channel = 'rest-hook' AND status IN ('requested', 'active');
