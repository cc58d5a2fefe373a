"""What the CLI shows that is not Click code: stores, status, progress, views, demo, debug."""
