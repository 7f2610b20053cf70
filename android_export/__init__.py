"""android_export."""
