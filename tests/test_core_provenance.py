"""fedattr.core.provenance: the commit of a source tree, from a real git repository."""

from __future__ import annotations

import subprocess

from fedattr.core.provenance import git_commit


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_git_commit_names_head_and_local_changes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one")
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "--short=12", "HEAD")
    assert git_commit(repo) == head
    assert git_commit(repo / "not" / "yet" / "there") == head  # a page folder still to be made
    (repo / "a.txt").write_text("two")
    assert git_commit(repo) == head + " + local changes"


def test_git_commit_outside_a_repository_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"
