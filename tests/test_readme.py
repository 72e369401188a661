from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```bash\n")[1:3]
    return [b.split("\n```", 1)[0].strip() for b in blocks]


def test_readme_opens_with_run_and_test_commands_and_ci_runs_the_test_one():
    run, test = readme_commands()
    assert "\n" not in run and "\n" not in test
    assert "circuits" in run and "pip install" in run
    assert "pytest" in test
    # The browser tests run in CI: the test command provides Chromium and the built app before pytest.
    assert test.index("chromium") < test.index("npm run build") < test.index("pytest")
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert test in ci_lines
