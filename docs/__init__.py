"""Documentation and runnable examples (a package only so examples import by dotted path)."""
