"""Assertions on the CLI's outcome shared by the tests: one error line, exit code 2."""


def assert_error(r, *words) -> str:
    """`r` (a click CliRunner result) is exit 2 with exactly one `ovmftool: error:` line holding `words`."""
    assert r.exit_code == 2, r.output
    errs = [line for line in r.output.splitlines() if line.startswith("ovmftool: error:")]
    assert len(errs) == 1, r.output
    for w in words:
        assert w in errs[0], errs[0]
    return errs[0]
