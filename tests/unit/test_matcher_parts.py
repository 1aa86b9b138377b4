"""The part table alone: what it says about designs' parts against a facility's machine
sizes, through additions, removals and reused rows."""

from __future__ import annotations

from services.matcher.parts import PartTable

FDM = ("fdm",)
CNC = ("cnc-milling",)


def members(bits: int) -> set[int]:
    return {i for i in range(bits.bit_length()) if bits >> i & 1}


def test_classification_by_rungs_and_updates() -> None:
    table = PartTable()
    # slot: (processes, up, down); a machine (sure, maybe) = ((5, 5, 5), (6, 6, 6))
    table.load([(0, FDM, (1, 1, 1), (1, 1, 1)),   # fits surely
                (1, FDM, (6, 6, 6), (6, 6, 6)),   # between the roundings: unsure
                (2, FDM, (9, 9, 9), (9, 9, 9)),   # fits no machine
                (3, CNC, (9, 9, 9), (9, 9, 9))])  # no sized CNC machine: unknown, kept
    machines = {"fdm": {((5, 5, 5), (6, 6, 6))}}
    excluded, unsure = table.size_filter(machines, 4)
    assert (members(excluded), members(unsure)) == ({2}, {1})
    # design 2 changes its part to a small one; design 0 goes; slot 0 is reused by a new
    # design with a big part (a new size for the group)
    table.remove(2, [(FDM, (9, 9, 9), (9, 9, 9))])
    table.add(2, [(FDM, (2, 2, 2), (2, 2, 2))])
    table.remove(0, [(FDM, (1, 1, 1), (1, 1, 1))])
    table.add(0, [(FDM, (20, 20, 20), (20, 20, 20)), (CNC, (1, 1, 1), (1, 1, 1))])
    excluded, unsure = table.size_filter(machines, 4)
    assert (members(excluded), members(unsure)) == ({0}, {1})
    assert len(table) == 5
    # a second machine that surely takes the unsure part
    machines["fdm"].add(((7, 7, 7), (7, 7, 7)))
    assert table.size_filter(machines, 4) == (1 << 0, 0)
    # a machine of another process answers the CNC group only
    assert table.size_filter({"cnc-milling": {((0, 0, 0), (0, 0, 0))}}, 4) == (
        1 << 0 | 1 << 3, 0)


def test_a_design_with_two_parts_of_one_size_keeps_one_after_removing_the_other() -> None:
    table = PartTable()
    big = (FDM, (9, 9, 9), (9, 9, 9))
    table.add(4, [big, big])
    table.remove(4, [big])
    assert members(table.size_filter({"fdm": {((5, 5, 5), (6, 6, 6))}}, 5)[0]) == {4}
    table.remove(4, [big])
    assert table.size_filter({"fdm": {((5, 5, 5), (6, 6, 6))}}, 5) == (0, 0)
    assert len(table) == 0


def test_many_designs_of_many_sizes() -> None:
    table = PartTable()
    for slot in range(100):
        table.add(slot, [(FDM, (slot % 20, 1, 1), (slot % 20, 1, 1))])
    excluded, _ = table.size_filter({"fdm": {((9, 9, 9), (9, 9, 9))}}, 100)
    assert members(excluded) == {s for s in range(100) if s % 20 > 9}
