"""The faust-streaming stream processor (topics, tables, agents). Built in the live-pipeline work."""
