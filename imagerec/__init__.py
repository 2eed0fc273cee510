"""imagerec core: configuration, blob store, database and CloudEvents, shared by every part.

Nothing in this package imports from `functions`, `web` or `workflows`.
"""
