"""Ranks on several hosts, without a cluster: the placement line every stage logs, the rows each host's
ranks write, and where DDP's ranks meet rank 0 (tests/test_multinode.py runs them on two nodes)."""

from __future__ import annotations

import socket

import pytest

from hpcmorph import mpi, store
from hpcmorph.train import distributed


def test_placement_names_every_host_with_its_ranks_and_local_ranks():
    line = mpi.placement(["node1", "node1", "node2", "node2"], [0, 1, 0, 1])
    assert line == "2 hosts: node1 ranks 0, 1 (local 0, 1); node2 ranks 2, 3 (local 0, 1)"
    assert mpi.placement(["a", "b", "a"], [0, 0, 1]) == "2 hosts: a ranks 0, 2 (local 0, 1); b rank 1 (local 0)"
    assert mpi.placement(["vm", "vm"], [0, 1]) == "1 host: vm ranks 0, 1 (local 0, 1)"


class _Ranks:
    def __init__(self, size: int):
        self.size = size


def test_rows_written_per_host_follow_the_ranks_row_ranges():
    hosts = ["node1", "node1", "node2", "node2"]
    assert [store.rows_of(r, 4, 55) for r in range(4)] == [(0, 14), (14, 28), (28, 42), (42, 55)]
    assert store._writers(55, _Ranks(4), hosts) == " on 2 hosts: node1 rows 0-27, node2 rows 28-54"
    # Ranks of one host that are not neighbours, and a host whose ranks got no row.
    assert store._writers(3, _Ranks(4), ["a", "b", "a", "b"]) == " on 2 hosts: a rows 0-0 2-2, b rows 1-1"
    assert store._writers(2, _Ranks(4), hosts) == " on 2 hosts: node1 rows 0-1, node2 no rows"
    assert store._writers(55, _Ranks(2), ["vm", "vm"]) == ""


def test_ddp_meets_rank0_on_its_host_address_or_on_loopback_within_one_host():
    addr, port, error = distributed._rank0_address(None, None, ["vm", "vm", "vm"])
    assert (addr, error) == ("127.0.0.1", None) and 0 < int(port) < 65536
    me = socket.gethostname()
    try:
        mine = socket.gethostbyname(me)
    except OSError:
        pytest.skip(f"this host's name {me!r} does not resolve")
    if mine.startswith("127."):
        addr, port, error = distributed._rank0_address(None, None, [me, "elsewhere"])
        assert (addr, port) == ("", "") and f"resolves to {mine}, a loopback address" in error
        assert "the ranks on elsewhere cannot reach" in error and "set MASTER_ADDR" in error
    else:
        assert distributed._rank0_address(None, None, [me, "elsewhere"])[:1] == (mine,)
    # What the launcher or the user set is kept.
    assert distributed._rank0_address("10.1.2.3", "4567", [me, "elsewhere"]) == ("10.1.2.3", "4567", None)
    addr, _, error = distributed._rank0_address(None, None, ["no-such-host.invalid", "elsewhere"])
    assert addr == "" and "does not resolve" in error and "set MASTER_ADDR" in error
