"""Alembic migrations of the feedback store (run by :mod:`imgclf.feedback.migrate`, never by hand)."""
