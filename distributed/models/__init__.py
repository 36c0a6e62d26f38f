"""Model families the engine can drive."""
