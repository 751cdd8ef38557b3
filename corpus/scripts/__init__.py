"""Scripts that fetch, build and store the corpus (`python -m corpus.scripts.store_builds`)."""
