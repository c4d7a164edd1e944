"""tests/mutation/summary.py: the per-module counts and score of a mutmut run, equivalent mutants set apart."""

from __future__ import annotations

import json

from mutation.summary import load, load_equivalent, table  # tests/ is on the path, as for conftest


def test_equivalent_survivors_are_counted_apart_and_left_out_of_the_score(tmp_path):
    """Module a: 6 killed (exit 1), 1 timeout (24), 2 survived of which 1 listed as equivalent, 1 without tests
    (33): score (6 + 1) / (6 + 1 + 1) = 87.5%, of all tested 7 / 9 = 77.8%. A listed mutant that was killed stays
    killed."""
    codes = {f"m.x_f__mutmut_{i}": 1 for i in range(6)} | {"m.x_f__mutmut_6": 24, "m.x_f__mutmut_7": 0,
                                                             "m.x_f__mutmut_8": 0, "m.x_f__mutmut_9": 33}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    listing = tmp_path / "equivalent.txt"
    listing.write_text("# comment\nm.x_f__mutmut_8  the dtype is cast again  # why\nm.x_f__mutmut_0  stale\n\n")
    equivalent = load_equivalent(listing)
    assert equivalent == {"m.x_f__mutmut_8": "the dtype is cast again", "m.x_f__mutmut_0": "stale"}
    results = load(tmp_path, equivalent)
    assert results["m/a.py"]["m.x_f__mutmut_8"] == "equivalent" and results["m/a.py"]["m.x_f__mutmut_0"] == "killed"
    row = table(results).splitlines()[2].split()
    assert row == ["m/a.py", "10", "6", "1", "1", "1", "1", "87.5%", "77.8%"]
