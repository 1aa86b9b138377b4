-- The trace context of the write that queued the event (W3C traceparent, then a space and
-- the tracestate when there is one; services/common/tracing.py), so that the relay, which
-- publishes later and maybe in another process, continues that trace. Null when the
-- write was not traced.
ALTER TABLE outbox ADD COLUMN trace_context text;
