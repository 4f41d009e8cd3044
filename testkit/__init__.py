"""Test rigs shared by tests/ and bench/ (not shipped in the package)."""
