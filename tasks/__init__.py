"""Prefect tasks and the pure functions they wrap: loop, storage, tables, figures, tracking."""
