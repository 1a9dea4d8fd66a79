-- Tracing (issue 12): the W3C trace context of the span that started a workflow (JSON text of
-- the propagation headers), so the worker's run span continues the caller's trace across
-- processes. NULL when tracing is not configured: nothing is stored then.
ALTER TABLE {schema}.workflows ADD COLUMN trace_context text;
