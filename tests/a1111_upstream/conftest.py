"""AUTOMATIC1111's own API tests live in test/ (vendored unchanged, AGPL-3.0: LICENSE.txt, README.md). They
need a running server and a `--base-url`: tests/test_a1111_upstream.py runs them in a pytest of their own, so
the project's suite does not collect them directly."""

collect_ignore = ["test"]
