"""Sweeps: real launch.py runs on a real local Ray (started once for the module), a real SQLite ledger."""
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from threestudio_like.sweep import cli
from threestudio_like.sweep.driver import Progress, format_duration
from threestudio_like.sweep.executors import NO_RAY_ENV
from threestudio_like.sweep.grid import GridError, JobSpec, expand, resolve_variants
from threestudio_like.sweep.ledger import STALE_S, Ledger
from threestudio_like.sweep.task import launches

ROOT = Path(__file__).resolve().parents[2]
# a run that takes seconds: 16² renders, no turntable or mesh export, a small Chamfer
TINY = ["trainer.max_steps=20", "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
        "trainer.test_at_end=false", "trainer.export_at_end=false", "trainer.progress_bar=false",
        "trainer.checkpoint_interval=10", "trainer.log_every_n_steps=5", "trainer.val_check_interval=1000",
        "system.quality.mesh_resolution=16", "system.quality.n_surface_points=300"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module, started the way the sweep starts it; sweeps run in-process join it."""
    ray = pytest.importorskip("ray")
    from threestudio_like.sweep.executors import start_ray

    started = start_ray(ray, None)
    yield ray
    if started:
        ray.shutdown()


def prompts_file(folder: Path, prompts) -> Path:
    path = folder / "prompts.txt"
    path.write_text("# prompts of the test sweep\n" + "\n".join(prompts) + "\n\n")
    return path


def sweep_args(out: Path, prompts: Path, *extra: str, variants: str = "sds-nerf") -> list[str]:
    return ["--config", str(ROOT / "configs" / "sds-nerf.yaml"), "--variants", variants, "--prompts", str(prompts),
            "--out", str(out), "--report-frames", "2", *TINY, *extra]


def launch_counts(out: Path) -> dict[str, int]:
    return {d.name: len(launches(d)) for d in (out / "jobs").iterdir()}


def metric_rows(run_dir) -> list[dict]:
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def metric_steps(run_dir) -> list[int]:
    return [int(float(row["step"])) for row in metric_rows(run_dir)]


# --------------------------------------------------------------------------------------------------
# Whole sweeps (Ray)
# --------------------------------------------------------------------------------------------------
def test_grid_completes_with_ledger_and_report_and_a_bad_prompt_fails_alone(tmp_path, local_ray, capsys):
    prompts = prompts_file(tmp_path, ["a red ball", "a purple dragon", "a blue cube"])
    out = tmp_path / "sweep"
    args = sweep_args(out, prompts, variants="sds-nerf,asd-nerf")
    assert cli.main(args) == 1  # exit 1: not every job is done
    printed = capsys.readouterr().out

    rows = Ledger.of(out).rows()
    assert len(rows) == 6 and len({r["hash"] for r in rows}) == 6
    done = [r for r in rows if r["state"] == "done"]
    assert sorted((r["variant"], r["prompt"]) for r in done) == [
        ("asd-nerf", "a blue cube"), ("asd-nerf", "a red ball"), ("sds-nerf", "a blue cube"), ("sds-nerf", "a red ball")]
    for row in done:
        run = Path(row["run_dir"])
        assert run.parent.parent == out / "runs" and (run / "ckpts" / "last.ckpt").is_file()
        quality = json.loads((run / "quality.json").read_text())
        assert quality["step"] == 20 and row["metrics"]["psnr"] == pytest.approx(quality["psnr"])
        assert row["attempts"] == 1 and row["wall_s"] > 0 and row["metrics"]["step"] == 20
        # the guidance of each variant is the one its config names
        assert f"guidance_type: {row['variant'].split('-')[0]}" in (run / "configs" / "parsed.yaml").read_text()
    # the bad prompt failed once per variant, at start-up, with the prior's one-line reason; nothing else failed
    failed = [r for r in rows if r["state"] == "failed"]
    assert [r["prompt"] for r in failed] == ["a purple dragon"] * 2
    for row in failed:
        assert row["attempts"] == 1 and row["error_kind"] == "user"
        assert "dragon" in row["error"] and "accepted words" in row["error"] and "\n" not in row["error"]
    assert "4/6 done" in printed and "ETA" in printed and "failed  sds-nerf 'a purple dragon'" in printed

    report = out / "report"
    assert (report / "compare.png").stat().st_size > 0 and (report / "compare.mp4").stat().st_size > 0
    compared = (report / "compare.md").read_text()
    # one labelled row per finished run (labelled by what differs: config name and prompt), then their config differences
    assert all(f"| {r['variant']} {r['prompt']} |" in compared for r in done) and "system.guidance_type" in compared
    truth = (report / "ground_truth.md").read_text()
    assert truth.count("| a red ball |") == 2 and truth.count("| a blue cube |") == 2 and "dragon" not in truth
    assert "| sds-nerf | coarse | 2 |" in truth and "| asd-nerf | coarse | 2 |" in truth

    # the same command again trains nothing, starts no Ray and leaves the report alone
    before, stamp = launch_counts(out), (report / "runs.txt").stat().st_mtime_ns
    assert cli.main(args) == 1
    again = capsys.readouterr().out
    assert launch_counts(out) == before and (report / "runs.txt").stat().st_mtime_ns == stamp
    assert "4 already done, 2 failed and not retried" in again and "executor:" not in again and "up to date" in again

    assert cli.main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "6 jobs: 4 done, 0 running, 2 failed, 0 pending" in status and status.count("unknown word 'dragon'") == 2


def test_killed_job_resumes_from_its_checkpoint(tmp_path, local_ray, capsys):
    import torch

    prompts = prompts_file(tmp_path, ["a red ball"])
    out = tmp_path / "sweep"
    killed = {}

    def kill_after_first_checkpoint():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            ckpts = list((out / "runs").glob("*/*/ckpts/last.ckpt")) if (out / "runs").is_dir() else []
            records = launches(next((out / "jobs").iterdir())) if ckpts else []
            if records:
                os.kill(records[0]["pid"], signal.SIGKILL)  # launch.py itself, mid-run
                time.sleep(0.5)  # it is gone: what it left is what the retry starts from
                killed.update(pid=records[0]["pid"], rows=metric_rows(ckpts[0].parent.parent),
                              ckpt_step=int(torch.load(ckpts[0], weights_only=True)["step"]))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    assert cli.main(sweep_args(out, prompts, "trainer.max_steps=60")) == 0
    killer.join()
    assert killed, "the job finished before its first checkpoint could be interrupted"
    assert "killed by signal 9 (SIGKILL); retrying" in capsys.readouterr().out

    (row,) = Ledger.of(out).rows()
    assert row["state"] == "done" and row["attempts"] == 2 and row["metrics"]["step"] == 60
    first, second = launches(out / "jobs" / row["hash"])
    assert first["pid"] == killed["pid"] and first["resume"] is None
    assert second["resume"] == str(Path(row["run_dir"]) / "ckpts" / "last.ckpt")
    # the second launch continued after the checkpoint: the first launch's rows up to it are kept
    # as written (their it/s are wall-clock measurements no restart from 0 would reproduce), each step once
    rows = metric_rows(row["run_dir"])
    kept = [r for r in killed["rows"] if int(r["step"]) <= killed["ckpt_step"]]
    assert killed["ckpt_step"] >= 10 and [int(r["step"]) for r in kept] == list(range(5, killed["ckpt_step"] + 1, 5))
    assert rows[:len(kept)] == kept and [int(r["step"]) for r in rows] == list(range(5, 61, 5))
    assert json.loads((Path(row["run_dir"]) / "quality.json").read_text())["step"] == 60


def test_two_sweeps_on_one_folder_run_each_job_once(tmp_path, local_ray):
    prompts = prompts_file(tmp_path, ["a red ball", "a blue cube"])
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # the other sweep: a separate process, without Ray, on the same folder
    other = subprocess.Popen([sys.executable, "-m", "threestudio_like.sweep", *sweep_args(out, prompts, "--executor", "sequential")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    # this one on Ray, one job at a time (a run takes both CPUs), so each sweep has a job to take
    assert cli.main(sweep_args(out, prompts, "--no-report", "--cpus-per-run", "2")) == 0
    other_out, _ = other.communicate(timeout=300)
    assert other.returncode == 0, other_out

    rows = Ledger.of(out).rows()
    assert len(rows) == 2 and all(r["state"] == "done" and r["attempts"] == 1 for r in rows)
    assert launch_counts(out) == {r["hash"]: 1 for r in rows}
    parents = {launches(out / "jobs" / r["hash"])[0]["parent"] for r in rows}
    assert other.pid in parents and len(parents) == 2  # one job ran under each sweep
    for row in rows:  # one training from step 0 each, never two into one folder
        assert metric_steps(row["run_dir"]) == [5, 10, 15, 20]


# --------------------------------------------------------------------------------------------------
# Without Ray, arguments, ledger
# --------------------------------------------------------------------------------------------------
def test_without_ray_address_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(NO_RAY_ENV, "1")
    prompts = prompts_file(tmp_path, ["a red ball"])
    assert cli.main(sweep_args(tmp_path / "sweep", prompts, "--address", "ray://head:10001")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--address ray://head:10001 needs Ray" in err and "dist" in err


@pytest.mark.parametrize("flag, value, message", [
    ("--variants", "sds-nerf,magic-nerf", "no config 'magic-nerf'"),
    ("--prompts", "missing.txt", "--prompts 'missing.txt' does not exist"),
    ("--seeds", "0,x", "--seeds '0,x' is not a comma-separated list"),
])
def test_bad_sweep_arguments_are_one_line(tmp_path, capsys, flag, value, message):
    args = sweep_args(tmp_path / "sweep", prompts_file(tmp_path, ["a red ball"]), "--seeds", "0")
    args[args.index(flag) + 1] = value
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert cli.main(["status", str(tmp_path / "nowhere")]) == 2 and "no sweep ledger" in capsys.readouterr().err


def test_jobs_are_identified_by_config_not_folder(tmp_path):
    configs = resolve_variants(str(ROOT / "configs" / "sds-nerf.yaml"), ["sds-nerf", "vsd-nerf"])
    here = expand(configs, ["a red ball"], [0, 1], ["trainer.max_steps=50"], tmp_path / "a")
    there = expand(configs, ["a red ball"], [0, 1], ["trainer.max_steps=50"], tmp_path / "b")
    assert [j.hash for j in here] == [j.hash for j in there] and len({j.hash for j in here}) == 4
    assert here[0].run_dir != there[0].run_dir
    longer = expand(configs, ["a red ball"], [0], ["trainer.max_steps=60"], tmp_path / "a")
    assert longer[0].hash not in {j.hash for j in here}
    # a refinement stage follows each job and starts from that job's run folder
    chain = expand(configs[:1], ["a red ball"], [0], [], tmp_path / "a", refine=configs)
    assert [j.stage for j in chain] == ["coarse", "sds-nerf", "vsd-nerf"]
    for before, stage in zip(chain, chain[1:]):  # each stage starts from the run folder of the one before
        assert stage.after == before.hash and f"system.geometry_convert_from={before.run_dir}" in stage.argv
    with pytest.raises(GridError, match="known beside --config: .*sds-nerf"):
        resolve_variants(str(ROOT / "configs" / "sds-nerf.yaml"), ["nope"])


def fake_jobs(n: int, root: Path) -> list[JobSpec]:
    return [JobSpec(f"{i:016x}", "v", f"p{i}", 0, "coarse", str(root / f"run{i}"), ("launch.py",)) for i in range(n)]


def test_concurrent_claims_never_hand_out_a_job_twice(tmp_path):
    jobs = fake_jobs(40, tmp_path)
    Ledger.of(tmp_path).add(jobs)
    claimed: list[str] = []

    def claimer(k: int) -> None:
        ledger = Ledger.of(tmp_path)  # a connection of its own, as a second sweep has
        while (job := ledger.claim(f"{socket.gethostname()}:{os.getpid()}:t{k}", [j.hash for j in jobs])) is not None:
            claimed.append(job.hash)

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(j.hash for j in jobs)


def test_claims_of_dead_owners_are_taken_over(tmp_path):
    jobs = fake_jobs(3, tmp_path)
    hashes = [j.hash for j in jobs]
    ledger = Ledger.of(tmp_path)
    ledger.add(jobs)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = f"{socket.gethostname()}:{os.getpid()}:a"
    assert ledger.claim(f"{socket.gethostname()}:{gone.pid}:b", hashes).hash == hashes[0]
    assert ledger.claim(live, hashes).hash == hashes[0]  # its owner process has exited: taken over at once
    assert ledger.claim(live, hashes).hash == hashes[1]
    assert ledger.claim("elsewhere:1:c", hashes).hash == hashes[2]  # another host, beating
    assert ledger.claim(live, hashes) is None
    ledger.db.execute("UPDATE jobs SET heartbeat = heartbeat - ? WHERE hash = ?", (STALE_S + 1, hashes[2]))  # silent for too long
    assert ledger.claim(live, hashes).hash == hashes[2] and ledger.claim(live, hashes) is None
    # failed jobs: a crash is retried while attempts are left, a user error only on request
    ledger.finish(hashes[0], live, "failed", 1, 1.0, {}, "exit status 1", "crash")
    ledger.finish(hashes[1], live, "failed", 1, 1.0, {}, "bad prompt", "user")
    ledger.finish(hashes[2], live, "failed", 3, 1.0, {}, "exit status 1", "crash")
    assert ledger.requeue_failed(hashes, max_attempts=3, user_errors=False) == 1
    assert ledger.requeue_failed(hashes, max_attempts=3, user_errors=True) == 2
    assert ledger.counts(hashes) == {"pending": 3, "running": 0, "done": 0, "failed": 0}


def test_eta_counts_down_with_the_running_jobs():
    progress = Progress(total=5, slots=2, out=io.StringIO())
    counts = {"pending": 1, "running": 2, "done": 2, "failed": 0}
    assert progress.eta(counts, [30.0, 60.0]) == "after the first job"
    progress.walls = [90.0, 110.0]  # mean 100 s: the pending job 100 s, the running ones 70 s and 40 s more, over 2 slots
    assert progress.eta(counts, [30.0, 60.0]) == format_duration((100 + 70 + 40) / 2) == "1m45s"
    assert progress.eta(counts, [130.0, 60.0]) == "1m10s"  # a job past the mean adds nothing
    assert progress.eta({"pending": 0, "running": 0, "done": 4, "failed": 1}, []) == "0s"
