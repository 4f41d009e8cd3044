"""providers/fake."""
