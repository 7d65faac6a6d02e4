"""Welcome email: a Flask + SQLAlchemy API that enqueues a pgjobs job in its own transaction."""
