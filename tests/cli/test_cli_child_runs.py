"""`mfm` and child runs (issue 16): `runs --tree`, `show` lists children (and a child its parent), `--json` carries
`parent_run_id` and `children`, `replay --wait` reports the verdict for the tree, `cancel` says it stops children."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import Mfm, wait_until


def _tree_run(mfm: Mfm, *params: str) -> tuple[int, dict[str, object]]:
    res = mfm("start", "demo_children", "-p", "work_ms=0", *(x for p in params for x in ("-p", p)), "--wait", "--json")
    return res.code, res.json()


def test_runs_tree_show_and_json_for_a_failed_child_then_recovered(mfm: Mfm, tmp_path: Path) -> None:
    fix = tmp_path / "fix"
    code, done = _tree_run(mfm, "children=3", "fail_child=1", f"required_file={fix}")
    assert code == 1 and done["status"] == "failed"
    parent = str(done["run_id"])

    listed = mfm("runs", "--json").json()
    by_id = {r["run_id"]: r for r in listed}
    children = by_id[parent]["children"]
    assert len(children) == 3 and by_id[parent]["parent_run_id"] is None
    assert all(by_id[c]["parent_run_id"] == parent and by_id[c]["op_id"] == "demo_child" for c in children)
    assert [by_id[c]["status"] for c in children] == ["completed", "failed", "completed"]

    tree = mfm("runs", "--tree")
    assert tree.code == 0, tree.err
    lines = tree.out.splitlines()
    assert lines[0].split()[-1] == "CHILDREN"
    row = next(i for i, ln in enumerate(lines) if ln.startswith(parent[:8]))
    assert "3 children: 2 ✓ 1 ✗ (worst: failed)" in lines[row]
    assert [ln[:12] for ln in lines[row + 1 : row + 4]] == [
        f"├─ {children[0][:8]} ",
        f"├─ {children[1][:8]} ",
        f"└─ {children[2][:8]} ",
    ]
    flat = mfm("runs")
    assert "├─" not in flat.out and "CHILDREN" not in flat.out  # the flat list is unchanged

    show = mfm("show", parent[:8])
    assert "children  3 children: 2 ✓ 1 ✗" in show.out
    assert f"  {children[1]}  failed  from demo.main.run_children" in show.out
    child_view = mfm("show", children[1][:8], "--json").json()
    assert child_view["parent_run_id"] == parent and child_view["children"] == []
    parent_view = mfm("show", parent[:8], "--json").json()
    assert [c["run_id"] for c in parent_view["children"]] == children
    assert [c["joined_status"] for c in parent_view["children"]] == ["Completed", "Failed", "Completed"]
    assert "parent    " + parent in mfm("show", children[1][:8]).out

    fix.write_text("ok")
    resumed = mfm("resume", parent[:8], "--wait", "--json")
    assert resumed.code == 0, resumed.err
    recovered = resumed.json()["run_id"]
    again = {r["run_id"]: r for r in mfm("runs", "--json").json()}
    assert [again[c]["status"] for c in again[recovered]["children"]] == ["completed"] * 3


def test_replay_reports_the_verdict_for_the_tree(mfm: Mfm) -> None:
    code, done = _tree_run(mfm, "children=2")
    assert code == 0
    parent = str(done["run_id"])
    res = mfm("replay", parent[:8], "--wait")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].endswith("deterministic (completed)")
    assert len([ln for ln in lines if ln.startswith("  child ")]) == 2
    assert lines[-1] == "tree: deterministic (parent + 2 children; the parent's replay re-executed no child)"
    as_json = mfm("replay", parent[:8], "--wait", "--json").json()
    assert as_json["tree_verdict"] == "deterministic" and len(as_json["children"]) == 2


def test_cancel_of_a_parent_says_its_children_stop_too(mfm: Mfm) -> None:
    parent = mfm.start("demo_children", "children=2", "work_ms=120000")

    def running() -> bool:
        listed = mfm("runs", "--json").json()
        return len(listed) == 3 and all(r["status"] == "running" for r in listed)

    wait_until(running, what="the parent and both children to run")
    res = mfm("cancel", parent[:8])
    assert res.code == 0, res.err
    assert res.out.splitlines()[1].startswith("and for its 2 running child runs: ")
    wait_until(lambda: all(r["status"] == "cancelled" for r in mfm("runs", "--json").json()), what="the tree to close")
