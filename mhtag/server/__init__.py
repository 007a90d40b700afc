"""The service: a FastAPI app (JSON API + web gallery) over an index, for programs and people."""
