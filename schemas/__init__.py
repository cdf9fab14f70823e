"""Wire formats: frozen, versioned pydantic models for every event streamsched carries."""
