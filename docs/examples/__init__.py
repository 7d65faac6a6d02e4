"""Runnable pgjobs examples."""
