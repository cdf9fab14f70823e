"""The faust-streaming stream processor: topics, tables and agents (live pipeline)."""
