"""The test suite (a package, so that tools/ and corpus/scripts/ import its helpers by name)."""
