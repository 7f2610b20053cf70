"""ios_export."""
