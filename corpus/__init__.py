"""The corpus: real firmware images and stored builds (data), and the scripts that fetch and
build them (`corpus.scripts`)."""
