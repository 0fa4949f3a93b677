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


# Markdown files whose relative links must resolve.
LINKED_DOCS = ['README.md', 'configs/README.md', *sorted(
    str(p.relative_to(REPO)) for p in (REPO / 'docs').glob('*.md'))]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _anchors(path: Path) -> set:
    text = re.sub(r'```.*?```', '', path.read_text(), flags=re.S)
    return {_anchor(h) for h in re.findall(r'^#+ (.+)$', text, re.M)}


def test_relative_links_point_to_existing_files_and_headings():
    broken = []
    for name in LINKED_DOCS:
        path = REPO / name
        text = re.sub(r'```.*?```', '', path.read_text(), flags=re.S)  # code blocks
        text = re.sub(r'`[^`\n]*`', '', text)  # inline code
        for target in re.findall(r'\]\(([^()\s]+)\)', text):
            if re.match(r'[a-z][a-z0-9+.-]*:', target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition('#')
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f'{name}: {target} (no file {linked})')
            elif anchor and linked.suffix == '.md' and anchor not in _anchors(linked):
                broken.append(f'{name}: {target} (no heading #{anchor} in {linked.name})')
    assert not broken, 'broken links:\n' + '\n'.join(broken)


def test_architecture_references_name_existing_sections():
    """Code, configs and docs cite `docs/architecture.md §N`: every N is a section (or a
    numbered pitfall 9.k) of that file."""
    text = (REPO / 'docs' / 'architecture.md').read_text()
    sections = set(re.findall(r'^#+ §([0-9.]+) ', text, re.M))
    pitfalls = text[text.index('## §9 '):]
    sections |= {f'9.{n}' for n in re.findall(r'^(\d+)\. ', pitfalls, re.M)}
    cited = {}
    for folder in ('projects', 'msvmamba_ops', 'configs', 'tools', 'tests', 'docs'):
        for path in (REPO / folder).rglob('*'):
            if path.suffix in ('.py', '.md', '.cpp', '.h', '.cu', '.cuh', '.sh', '.yml'):
                for n in re.findall(r'architecture\.md §([0-9]+(?:\.[0-9]+)*)',
                                    path.read_text(errors='replace')):
                    cited.setdefault(n, str(path.relative_to(REPO)))
    assert len(sections) > 30 and cited
    unknown = {n: where for n, where in cited.items() if n not in sections}
    assert not unknown, f'no such section in docs/architecture.md: {unknown}'
