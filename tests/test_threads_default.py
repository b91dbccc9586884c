"""`lmlab.devices.default_threads`: overrides, physical cores, cgroup quota and load, on a fake
/sys tree and monkeypatched os calls (no dependence on this machine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmlab import devices
from lmlab.devices import default_threads
from lmlab.errors import InputError


def fake_topology(root: Path, cores: list[tuple[int, int]]) -> Path:
    """A /sys/devices/system/cpu look-alike: logical CPU i sits on (package, core) = cores[i]."""
    for i, (pkg, core) in enumerate(cores):
        topo = root / f"cpu{i}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{pkg}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return root


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Set up a machine: `machine(cores, load=0.0, v2=None, v1=None, affinity=None)`."""

    def setup(cores, load=0.0, v2=None, v1=None, affinity=None):
        for var in (devices.THREADS_ENV, "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(devices, "SYS_CPU", fake_topology(tmp_path / "cpu", cores))
        monkeypatch.setattr(devices, "CGROUP_V2", tmp_path / "cpu.max")
        monkeypatch.setattr(devices, "CGROUP_V1", tmp_path / "v1")
        if v2 is not None:
            (tmp_path / "cpu.max").write_text(v2)
        if v1 is not None:
            (tmp_path / "v1").mkdir()
            (tmp_path / "v1" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
            (tmp_path / "v1" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
        cpus = set(range(len(cores))) if affinity is None else set(affinity)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda: len(cores))
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))

    return setup


SMT8 = [(0, c) for c in range(4)] * 2  # 8 logical CPUs, 4 cores with 2 hyperthreads each


def test_idle_machine_uses_physical_cores_not_smt_siblings(machine):
    machine(SMT8)
    assert default_threads() == (4, "4 physical cores")


def test_two_sockets_count_cores_per_package(machine):
    machine([(0, 0), (0, 1), (1, 0), (1, 1)])  # the same core_id on two packages
    assert default_threads()[0] == 4


def test_affinity_limits_cores(machine):
    machine(SMT8, affinity=[0, 4])  # both siblings of core 0
    assert default_threads() == (1, "1 physical core")


def test_cgroup_v2_quota(machine):
    machine(SMT8, v2="250000 100000\n")
    assert default_threads() == (2, "cgroup CPU quota 2.5")


def test_cgroup_v2_unlimited(machine):
    machine(SMT8, v2="max 100000\n")
    assert default_threads()[0] == 4


def test_cgroup_v1_quota(machine):
    machine(SMT8, v1=(150000, 100000))
    assert default_threads() == (1, "cgroup CPU quota 1.5")


def test_cgroup_v1_unlimited(machine):
    machine(SMT8, v1=(-1, 100000))
    assert default_threads()[0] == 4


def test_busy_machine_gets_fewer_threads(machine):
    machine([(0, 0), (0, 1)], load=3.1)
    assert default_threads() == (1, "machine busy: load 3.1 on 2 CPUs")


def test_partly_busy_machine_leaves_free_cores(machine):
    machine(SMT8, load=5.0)  # 8 CPUs, 5 busy: 3 left
    n, why = default_threads()
    assert n == 3 and why.startswith("machine busy")


def test_light_load_keeps_all_cores(machine):
    machine([(0, 0), (0, 1)], load=0.3)
    assert default_threads() == (2, "2 physical cores")


def test_torchrun_local_ranks_share_the_cores(machine, monkeypatch):
    machine(SMT8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_threads() == (2, "4 physical cores shared by 2 local ranks")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_threads()[0] == 1


def test_unreadable_topology_counts_logical_cpus(machine, monkeypatch, tmp_path):
    machine(SMT8)
    monkeypatch.setattr(devices, "SYS_CPU", tmp_path / "missing")
    assert default_threads()[0] == 8


def test_lmlab_threads_overrides_everything(machine, monkeypatch):
    machine([(0, 0), (0, 1)], load=9.0)
    monkeypatch.setenv("LMLAB_THREADS", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == (2, "LMLAB_THREADS=2")


def test_omp_num_threads_is_respected(machine, monkeypatch):
    machine(SMT8, load=9.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")  # nested form: the outer count
    assert default_threads() == (3, "OMP_NUM_THREADS=3")


def test_invalid_omp_num_threads_is_ignored(machine, monkeypatch):
    machine(SMT8)
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert default_threads() == (4, "4 physical cores")


@pytest.mark.parametrize("bad", ["0", "two", "-1", "1.5"])
def test_bad_lmlab_threads_is_one_clear_error(machine, monkeypatch, bad):
    machine(SMT8)
    monkeypatch.setenv("LMLAB_THREADS", bad)
    with pytest.raises(InputError, match=f"LMLAB_THREADS={bad!r}.*whole number >= 1"):
        default_threads()


def test_real_machine_gives_a_usable_count():
    n, why = default_threads()
    assert 1 <= n <= (os.cpu_count() or 1) or why.startswith(("LMLAB_THREADS", "OMP_NUM"))
    assert why
