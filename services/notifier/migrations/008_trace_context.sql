-- Trace contexts (W3C traceparent, then a space and the tracestate when there is one;
-- services/common/tracing.py), null when untraced. A match message keeps the context of
-- the consumer span that routed it; a delivery the contexts of the messages its items
-- came from, first item's first: its attempts are spans in that trace, linked to the rest.
ALTER TABLE match_messages ADD COLUMN trace_context text;
ALTER TABLE deliveries ADD COLUMN trace_contexts text[];
