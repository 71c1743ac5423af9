"""Faults a run must survive with results that say nothing false.

Fast tests: the results-directory lock, the watchdog, a full disk (a real tmpfs when
running as root), and the clean-up of an earlier run's
orphans (with stand-in processes), damaged and failed job files, the resume check, the one-line
cause of an in-run error. Slow test (starts Flower): SIGKILL of the CLI mid-run, a concurrent
second run, and a re-run that reproduces an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedattr.core.errors import DamagedResultsError, NoSpaceError, RunFailedError, UserError
from fedattr.launch.ownership import LOCK_NAME, check_resume, own_results_dir, scenario_differences
from fedattr.launch.processes import FLWR_ENV, RUN_TAG, tagged_pids
from fedattr.launch.simulation import no_space_path, raise_run_failure, run_error_cause
from fedattr.report import load_results, summarize, write_report
from fedattr.results.store import JobRecorder, job_state

ROOT = Path(__file__).resolve().parents[1]
SMALL = Path(__file__).resolve().parent / "fixtures" / "results_small"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _wait(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _sleeper(tag: str) -> subprocess.Popen:
    """A stand-in for a SuperLink: a process carrying the run tag, in a session of its own."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            env={**os.environ, RUN_TAG: tag}, start_new_session=True)


# --------------------------------------------------------------------------- ownership

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fedattr.launch.ownership import own_results_dir
    with own_results_dir(Path(sys.argv[1])) as tag:
        print(tag, flush=True)
        if sys.argv[2] == "spawn":
            import os, subprocess
            from fedattr.launch.processes import RUN_TAG
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 env={**os.environ, RUN_TAG: tag}, start_new_session=True)
            print(p.pid, flush=True)
        time.sleep(120)
""")


def _holder(results: Path, mode: str = "hold") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(results), mode], stdout=subprocess.PIPE, text=True)


def test_a_second_run_into_a_held_directory_is_refused_naming_the_holder(tmp_path):
    holder = _holder(tmp_path)
    try:
        holder.stdout.readline()
        with pytest.raises(UserError) as err:
            with own_results_dir(tmp_path):
                pass
        msg = str(err.value)
        assert f"PID {holder.pid}" in msg and "in use by another fedattr run" in msg and "started 20" in msg
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: the directory can be taken over
    assert _wait(lambda: _try_own(tmp_path))


def _try_own(path: Path) -> bool:
    try:
        with own_results_dir(path, watch=False):
            return True
    except UserError:
        return False


def test_sigkill_of_the_launcher_ends_its_processes_through_the_watchdog(tmp_path):
    holder = _holder(tmp_path, "spawn")
    tag = holder.stdout.readline().strip()
    child = int(holder.stdout.readline())
    # /proc/<pid>/environ can read empty while the child is still being exec'd: wait for the tag
    assert _alive(child) and _wait(lambda: child in tagged_pids(tag))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert _wait(lambda: not _alive(child)), "the watchdog did not end the orphan"
    assert _wait(lambda: tagged_pids(tag) == [])
    assert _wait(lambda: _try_own(tmp_path))  # and the lock is free again


def test_the_next_start_ends_what_an_earlier_run_left_behind(tmp_path):
    orphan_tag = "orphan-" + str(os.getpid())
    orphan = _sleeper(orphan_tag)
    try:
        # an earlier run, killed together with its watchdog, recorded its tag in the lock file
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "h", "tag": orphan_tag,
                                                      "started": "2026-01-01T00:00:00"}))
        with own_results_dir(tmp_path, watch=False) as tag:
            assert tag != orphan_tag
            assert _wait(lambda: not _alive(orphan.pid), 10)
            holder = json.loads((tmp_path / LOCK_NAME).read_text())
            assert holder["pid"] == os.getpid() and holder["tag"] == tag
    finally:
        orphan.kill()
        orphan.wait()


# --------------------------------------------------------------------------- resume check


def test_resume_refuses_other_settings_and_lists_the_keys(tmp_path):
    stored = json.loads((SMALL / "run" / "scenario.json").read_text())
    run = Path(shutil.copytree(SMALL / "run", tmp_path / "run"))
    check_resume(run, {"scenario.json": stored}, force=False)  # same settings: resumes
    check_resume(run, {"scenario.json": dict(stored, output_dir="elsewhere")}, force=False)  # ignored key
    new = json.loads(json.dumps(stored))
    new["rounds"] = 9
    new["train"]["lr"] = 0.5
    with pytest.raises(UserError) as err:
        check_resume(run, {"scenario.json": new}, force=False)
    assert "differing keys: rounds, train.lr" in str(err.value) and "--force" in str(err.value)
    assert (run / "jobs").is_dir()  # nothing moved
    check_resume(run, {"scenario.json": new}, force=True)
    moved = list((run / "superseded").glob("*/jobs"))
    assert len(moved) == 1 and not (run / "jobs").exists() and not (run / "scenario.json").exists()
    assert sorted(p.name for p in moved[0].iterdir()) == sorted(p.name for p in (SMALL / "run" / "jobs").iterdir())


def test_scenario_differences_reports_added_and_removed_keys():
    assert scenario_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 0}) == ["b.c", "d"]


def test_more_seeds_extend_a_study_fewer_or_other_seeds_do_not():
    assert scenario_differences({"seeds": [0, 1]}, {"seeds": [0, 1, 2, 3]}) == []
    assert scenario_differences({"seeds": [0, 1, 2]}, {"seeds": [0, 1]}) == ["seeds"]
    assert scenario_differences({"seeds": [0, 1]}, {"seeds": [2, 3]}) == ["seeds"]
    assert scenario_differences({"x": {"seeds": [0]}}, {"x": {"seeds": [0, 1]}}) == ["x.seeds"]
    assert scenario_differences({"arms": [{"n": 1}]}, {"arms": [{"n": 2}]}) == ["arms"]


# --------------------------------------------------------------------------- damaged and failed jobs


@pytest.fixture()
def run_dir(tmp_path):
    return Path(shutil.copytree(SMALL / "run", tmp_path / "run"))


def test_a_valid_job_is_finished(run_dir):
    job = run_dir / "jobs" / "attack__s0"
    assert job_state(job).status == "finished" and JobRecorder(job).finished


@pytest.mark.parametrize("damage,needle", [
    ("truncate_rounds", "rounds.jsonl:3: not valid JSON"),
    ("garbage_summary", "summary.json: not valid JSON"),
    ("summary_wrong_type", "summary.json: invalid job summary"),
    ("drop_a_round", "holds rounds [1, 2]"),
    ("bad_round_record", "rounds.jsonl:2: invalid round record"),
])
def test_a_damaged_job_is_not_finished_and_reporting_it_is_one_clear_error(run_dir, damage, needle):
    job = run_dir / "jobs" / "attack__s1"
    rounds, summary = job / "rounds.jsonl", job / "summary.json"
    text = rounds.read_text()
    if damage == "truncate_rounds":
        rounds.write_text(text[: len(text) - 40])
    elif damage == "garbage_summary":
        summary.write_text("\x00\x01garbage")
    elif damage == "summary_wrong_type":
        summary.write_text(json.dumps(dict(json.loads(summary.read_text()), seed="zero")))
    elif damage == "drop_a_round":
        rounds.write_text("".join(text.splitlines(keepends=True)[:2]))
    elif damage == "bad_round_record":
        lines = text.splitlines()
        lines[1] = json.dumps(dict(json.loads(lines[1]), round="two"))
        rounds.write_text("\n".join(lines) + "\n")
    state = job_state(job)
    assert state.status == "damaged" and needle in state.detail and str(job) in state.detail
    assert not JobRecorder(job).finished  # so a resume redoes it, never skips it
    with pytest.raises(DamagedResultsError) as err:
        write_report(run_dir)
    assert needle in str(err.value)
    with pytest.raises(DamagedResultsError):
        summarize(run_dir)


def _fail(job: Path, reason: str) -> None:
    summary = json.loads((job / "summary.json").read_text())
    summary.update(status="failed", failure_reason=reason)
    (job / "summary.json").write_text(json.dumps(summary))
    lines = (job / "rounds.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["rejected"] = [{"partition_id": 2, "node_id": 77, "reason": "error reply: client raised"}]
    rec["missing"] = 1
    lines[1] = json.dumps(rec)
    (job / "rounds.jsonl").write_text("\n".join(lines) + "\n")


def test_a_failed_job_is_retried_listed_with_its_reasons_and_left_out_of_the_statistics(run_dir):
    job = run_dir / "jobs" / "attack__s1"
    _fail(job, "rounds [2] had fewer than min_clients = 4 valid replies")
    assert job_state(job).status == "failed" and not JobRecorder(job).finished
    res = load_results(run_dir)
    assert [j.seed for j in res.failed] == [1] and ("attack", 1) not in res.jobs
    summary = summarize(run_dir).as_dict()
    assert summary["jobs"]["failed"] == 1 and summary["final_accuracy"]["attack"]["n"] == 1
    reasons = {(f["partition_id"], f["reason"]): f["rounds"] for f in summary["failures"]}
    assert reasons[(2, "error reply: client raised")] == [2]
    assert reasons[(None, "1 node(s) sent no reply")] == [2]
    assert any("job failed: rounds [2] had fewer" in r for _, r in reasons)
    md = write_report(run_dir).read_text()
    assert "**1 failed**" in md and "| attack | 1 | failed | 2 | 2 | error reply: client raised |" in md


def test_a_recorder_restarting_a_failed_job_discards_its_summary(run_dir):
    job = run_dir / "jobs" / "attack__s1"
    _fail(job, "x")
    rec = JobRecorder(job)
    rec.start()
    assert job_state(job).status == "absent" and not (job / "summary.json").exists()


# --------------------------------------------------------------------------- in-run errors


def test_the_real_cause_of_an_in_run_error_is_one_line(tmp_path):
    log = tmp_path / "flwr.log"
    log.write_text("old run\nValueError: from an earlier launch\n")
    start = log.stat().st_size
    with open(log, "a") as fh:
        fh.write("\x1b[92mINFO \x1b[0m: starting\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                 "fedattr.core.errors.UserError: mnist has 60000 images; the splits do not fit\n"
                 "\x1b[91mERROR \x1b[0m: ServerApp thread raised an exception\n")
    assert run_error_cause(log, start) == "UserError: mnist has 60000 images; the splits do not fit"
    assert run_error_cause(log, log.stat().st_size) is None
    # Flower's wrappers of a crashed simulation (chained after the cause) are skipped
    with open(log, "a") as fh:
        fh.write("Exception: The current node timed out during startup.\n"
                 "RuntimeError: Simulation Runtime crashed.\n"
                 "RuntimeError: An error was encountered. Ending simulation.\n")
    assert run_error_cause(log, start) == "Exception: The current node timed out during startup."
    assert run_error_cause(tmp_path / "absent.log") is None


# --------------------------------------------------------------------------- the real thing (slow)

TINY = textwrap.dedent("""
    name = "faults"
    seeds = [0]
    num_clients = 3
    attacker_ids = [0]
    rounds = 3
    [data]
    dataset = "mnist5k"
    val_size = 200
    test_size = 200
    aux_size = 0
    pool_size = 600
    [partition]
    kind = "iid"
    [attribution]
    num_threads = 1
    [[attribution.evaluators]]
    name = "loo"
    [[arms]]
    name = "honest"
    attack = "honest"
    [[arms]]
    name = "noise"
    attack = "noise_floor"
""")


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, **FLWR_ENV, "FLWR_HOME": str(ROOT / ".flwr_home")}
    return subprocess.Popen([sys.executable, "-m", "fedattr.cli.app", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _compare_rounds():
    spec = importlib.util.spec_from_file_location("compare_rounds", ROOT / "scripts" / "compare_rounds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compare


def _values(results: Path) -> dict:
    out = {}
    for rounds in sorted(results.glob("jobs/*/rounds.jsonl")):
        out[rounds.parent.name] = [{k: r[k] for k in ("round", "test", "values", "cumulative", "clients")}
                                   for r in map(json.loads, rounds.read_text().splitlines())]
    return out


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    family, grew = {pid}, True
    while grew:
        grew = False
        for p, pp in parent.items():
            if pp in family and p not in family:
                family.add(p)
                grew = True
    return sorted(family)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sigkill_mid_run_leaves_nothing_and_a_rerun_matches_an_uninterrupted_concurrent_run(tmp_path):
    """A run killed mid-way and resumed (one job at a time) ends with the round records of an
    uninterrupted run whose two jobs ran at once (``--jobs 2``: two Flower runs on one SuperLink)."""
    scenario = tmp_path / "faults.toml"
    scenario.write_text(TINY)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    # The uninterrupted reference run is independent of the other runs (its own directory, tag,
    # SuperLink and Ray instance), so it runs alongside them rather than before them: a run's
    # start-up is mostly waiting, and the test pays for two runs' start-up in a row instead of three.
    ref = _cli(["run", str(scenario), "--out", str(reference), "--no-report", "--jobs", "2"])
    first = _cli(["run", str(scenario), "--out", str(killed), "--no-report"])
    launched = [ref, first]
    try:
        # wait for the first round record of the interrupted run
        assert _wait(lambda: any(p.stat().st_size for p in killed.glob("jobs/*/rounds.jsonl")), 400)
        holder = json.loads((killed / LOCK_NAME).read_text())
        tag = holder["tag"]
        assert holder["pid"] == first.pid and tagged_pids(tag)
        # Freeze the run's Flower processes (not the CLI) so that it is still mid-run, however slow
        # the machine, while a second run starts; SIGKILL ends stopped processes all the same.
        family = sorted(set(_family(first.pid) + tagged_pids(tag)) - {first.pid})
        for pid in tagged_pids(tag):
            os.kill(pid, signal.SIGSTOP)
        # a second run into the same directory, while the first runs: refused, naming the holder
        second = _cli(["run", str(scenario), "--out", str(killed), "--no-report"])
        assert second.wait(timeout=300) == 2
        err = second.stderr.read()
        assert f"PID {first.pid}" in err and "in use by another fedattr run" in err
        assert not all(job_state(j).status == "finished" for j in killed.glob("jobs/*"))  # mid-run
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert _wait(lambda: not any(_alive(p) for p in family), 60), [p for p in family if _alive(p)]
        assert tagged_pids(tag) == []

        again = _cli(["run", str(scenario), "--out", str(killed), "--no-report"])
        launched.append(again)
        _, again_err = again.communicate(timeout=600)
        assert again.returncode == 0, again_err
        _, ref_err = ref.communicate(timeout=600)
        assert ref.returncode == 0, ref_err
    finally:
        # only on a failure above: SIGTERM lets the launcher end its Flower processes itself
        for proc in launched:
            if proc.poll() is None:
                proc.terminate()
                proc.communicate(timeout=120)
    assert _values(killed) == _values(reference)
    assert all(job_state(j).status == "finished" for j in killed.glob("jobs/*"))
    # every field of every round record but timings, sequential (resumed) against concurrent
    assert json.loads((reference / "environment.json").read_text())["concurrent_runs"] == 2
    assert sorted(p.name for p in (reference / "logs").glob("flwr.*.log")) == ["flwr.0.log", "flwr.1.log"]
    jobs, rounds, diffs, _ = _compare_rounds()(killed, reference)
    assert (jobs, rounds, diffs) == (2, 6, [])


# --------------------------------------------------------------------------- a full disk


def test_the_launcher_finds_a_full_disk_in_the_flower_log(tmp_path):
    log = tmp_path / "flwr.log"
    log.write_text("earlier run: OSError: [Errno 28] No space left on device: '/old'\n")
    start = log.stat().st_size
    with open(log, "a") as fh:
        fh.write("Traceback (most recent call last):\n"
                 "\x1b[91mOSError: [Errno 28] No space left on device: \"/r/it's/jobs/a__s0/rounds.jsonl\"\x1b[0m\n"
                 "RuntimeError: 1 of 1 job(s) failed\n")
    assert no_space_path(log, start) == "/r/it's/jobs/a__s0/rounds.jsonl"
    with pytest.raises(NoSpaceError, match=r"no space left on /r/it's/jobs/a__s0/rounds.jsonl: the run ended"):
        raise_run_failure("the run ended", log, start)
    plain = tmp_path / "plain.log"
    plain.write_text("ValueError: bad thing\n")
    with pytest.raises(RunFailedError, match="the run ended: ValueError: bad thing") as exc:
        raise_run_failure("the run ended", plain, 0)
    assert not isinstance(exc.value, NoSpaceError)


@pytest.fixture()
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only), unmounted afterwards; ``fill()`` fills it, ``free()`` empties the filler."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the ENOSPC tests with a failing writer run everywhere)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")

    class Disk:
        path = mnt
        filler = mnt / "filler"

        def fill(self) -> None:
            with open(self.filler, "ab", buffering=0) as fh:
                for size in (4096, 512, 1):
                    try:
                        while True:
                            fh.write(b"x" * size)
                    except OSError:
                        pass

        def free(self) -> None:
            self.filler.unlink()

    try:
        yield Disk()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_at_the_lock_is_one_clear_error(small_disk):
    results = small_disk.path / "r"
    small_disk.fill()
    with pytest.raises(NoSpaceError, match=f"no space left on {results / LOCK_NAME}"):
        with own_results_dir(results, watch=False):
            pass
    small_disk.free()
    with own_results_dir(results, watch=False) as tag:
        assert json.loads((results / LOCK_NAME).read_text())["tag"] == tag


def test_report_on_a_full_disk_exits_1_then_completes_once_space_is_freed(small_disk):
    root = shutil.copytree(SMALL / "run", small_disk.path / "run")
    small_disk.fill()
    proc = subprocess.run([sys.executable, "-m", "fedattr.cli.app", "report", str(root)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "no space left on " + str(root) in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert not list(root.rglob("*.tmp")) and not list(root.rglob(".*.tmp"))
    assert [p for p in root.rglob("*") if p.is_file() and p.stat().st_size == 0] == []
    small_disk.free()
    again = subprocess.run([sys.executable, "-m", "fedattr.cli.app", "report", str(root)], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (root / "report.md").stat().st_size > 0 and (root / "report.html").stat().st_size > 0


def test_run_into_a_full_disk_exits_1_before_flower_starts(small_disk, tmp_path):
    small_disk.fill()
    out = small_disk.path / "run"
    env = dict(os.environ, FEDATTR_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "fedattr.cli.app", "run", str(ROOT / "scenarios" / "demo.toml"),
                           "--out", str(out), "--set", "rounds=1", "--set", "seeds=[0]"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "no space left on " + str(out) in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert not (out / "logs").exists()  # Flower never started


def test_a_full_disk_at_the_out_dir_check_is_a_failed_run_not_bad_input(tmp_path, monkeypatch):
    import errno

    from fedattr.scenario.checks import check_out_dir

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(NoSpaceError, match=f"no space left on {tmp_path / 'r'}"):
        check_out_dir(tmp_path / "r")
