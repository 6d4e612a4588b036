"""tokentrail."""
