"""The mutation run's list of planted bugs (scripts/mutation.py) still applies to the code."""
import importlib.util
import sys

from conftest import REPO_ROOT


def load_mutation():
    spec = importlib.util.spec_from_file_location("mutation", REPO_ROOT / "scripts" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def test_every_mutant_snippet_matches_exactly_once():
    mut = load_mutation()
    ids = [m.id for m in mut.MUTANTS]
    assert len(ids) == len(set(ids)) and ids[0] == "S00"
    assert sum(i.startswith("I") for i in ids) == 11  # the planted bugs of issue 14
    assert len(ids) - 1 >= 41
    for m in mut.MUTANTS:
        assert m.old != m.new and m.description, m.id
        for t in m.tests or mut.TESTS[m.file]:
            assert (REPO_ROOT / t.split("::")[0]).is_file(), (m.id, t)
    errors = {k: v for k, v in mut.check(REPO_ROOT, mut.MUTANTS).items() if v}
    assert not errors, "re-target these mutants in scripts/mutation.py: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
