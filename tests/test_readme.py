"""CI must run exactly the README's set-up and test commands."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands():
    blocks = re.findall(r'```bash\n(.*?)```', (REPO / 'README.md').read_text(), re.S)
    return [b.strip() for b in blocks]


def test_ci_runs_readme_setup_and_test_commands():
    setup, test = _readme_commands()[:2]
    ci_lines = [line.strip() for line in (REPO / '.ci/run').read_text().splitlines()
                if line.strip() and not line.lstrip().startswith(('#', 'set ', 'cd '))]
    assert ci_lines == [setup, test], (ci_lines, setup, test)
