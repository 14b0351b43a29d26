"""`make test-slurm`: the demo DAG through a real one-node SLURM, checked against a local run.

1. starts the one-node cluster (tests/slurm/cluster.sh: munge, MariaDB, slurmdbd, slurmctld, slurmd);
2. runs the demo DAG locally (profiles/local) and through SLURM (profiles/slurm + the test overlay),
   each in its own temp workdir;
3. while the SLURM run goes, `scancel`s the fine-tune job once it has written a checkpoint: the
   profile's `retries` resubmits it and the job resumes from that checkpoint;
4. checks with `sacct` that every non-local job ran through SLURM and completed, in the partition
   the profile gives its rule, GPU rules with gres/gpu in AllocTRES, the cancelled job among them;
5. compares results with the local run: data stages by sha256, the LoRA, synthetic images and
   metrics within tolerances;
6. stops exactly the daemons it started. The last line printed is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CLUSTER = HERE / "cluster.sh"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
DEMO = ROOT / "config" / "demo.yaml"
# the test node is small: no demo job needs more; the site figures stay in profiles/slurm
MEM_CAP_MB = 2000
CANCEL_RULE = "finetune"
# tolerances: the two runs use the same threads per job, so most things match exactly; these
# bound what a resumed fine-tune or a different BLAS path may move
LORA_ATOL = 1e-5
PIXEL_MAE = 2.0  # mean absolute difference per synthetic image, 0..255
METRIC_ATOL = 0.05


class Failed(Exception):
    pass


def log(msg: str) -> None:
    print(f"[test-slurm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


# ---------------------------------------------------------------------------------------------
# profile


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_profile(dest: Path) -> dict:
    """profiles/slurm as a site would use it, plus the test overlay (fast polling, small memory)."""
    prof = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    prof = deep_merge(prof, yaml.safe_load((HERE / "profile-test.yaml").read_text()))
    # rules may ask for more threads than this machine has (Snakemake caps them at --cores
    # locally); SLURM would reject the --cpus-per-task, so cap them as the local run does
    prof["max-threads"] = os.cpu_count()
    for res in [prof.get("default-resources", {}), *prof.get("set-resources", {}).values()]:
        if "mem_mb" in res:
            res["mem_mb"] = min(int(res["mem_mb"]), MEM_CAP_MB)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return prof


def partition_of(profile: dict, rule: str) -> str:
    res = profile.get("set-resources", {}).get(rule, {})
    return res.get("slurm_partition", profile["default-resources"]["slurm_partition"])


# ---------------------------------------------------------------------------------------------
# runs


def snakemake(args: list[str], workdir: Path, logfile: Path, env: dict) -> subprocess.Popen:
    cmd = [str(SNAKEMAKE), "--configfile", str(DEMO), "-d", str(workdir), *args]
    log("$ " + " ".join(cmd))
    out = logfile.open("w")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)


def job_stats(workdir: Path, env: dict) -> Counter:
    """Jobs of the demo DAG per rule, from a dry run."""
    p = sh(
        [str(SNAKEMAKE), "-n", "--cores", "1", "--configfile", str(DEMO), "-d", str(workdir)],
        cwd=ROOT,
        env=env,
    )
    stats, inside = Counter(), False
    for line in p.stdout.splitlines():
        if line.startswith("job ") and "count" in line:
            inside = True
        elif inside and line.startswith("total"):
            break
        elif inside and re.match(r"^\w+\s+\d+$", line):
            name, n = line.split()
            stats[name] = int(n)
    if not stats:
        raise Failed("dry run printed no job stats:\n" + p.stdout[-2000:])
    return stats


def logged_jobs(logfile: Path) -> list[dict]:
    """Job blocks of a Snakemake log: kind (rule/localrule), name, wildcards, resources."""
    jobs, cur = [], None
    for line in logfile.read_text(errors="replace").splitlines():
        m = re.match(r"^(rule|localrule) (\w+):$", line)
        if m:
            cur = {"kind": m.group(1), "name": m.group(2), "wildcards": "", "resources": {}}
            jobs.append(cur)
        elif cur is not None and line.startswith("    wildcards: "):
            cur["wildcards"] = line.split(": ", 1)[1]
        elif cur is not None and line.startswith("    resources: "):
            for item in line.split(": ", 1)[1].split(", "):
                k, _, v = item.partition("=")
                cur["resources"][k] = v
        elif not line.startswith("    "):
            cur = None
    return jobs


class Canceller(threading.Thread):
    """scancel the CANCEL_RULE job once it has written its first complete checkpoint."""

    def __init__(self, workdir: Path, env: dict, stop: threading.Event):
        super().__init__(daemon=True)
        self.workdir, self.env, self.stop = workdir, env, stop
        self.job_id = self.checkpoint = self.at = None

    def run(self) -> None:
        t0 = time.time()
        while not self.stop.is_set():
            ckpts = sorted(self.workdir.glob("results/lora/*.ckpt/checkpoint-*/state.json"))
            if ckpts:
                q = subprocess.run(
                    ["squeue", "-h", "-o", "%i|%k|%T"], text=True, capture_output=True, env=self.env
                )
                for row in q.stdout.splitlines():
                    jid, comment, state = row.split("|", 2)
                    if comment.startswith(f"rule_{CANCEL_RULE}") and state == "RUNNING":
                        subprocess.run(["scancel", jid], check=True, env=self.env)
                        self.job_id, self.checkpoint = jid, ckpts[-1].parent.name
                        self.at = round(time.time() - t0, 1)
                        log(f"scancel {jid} ({CANCEL_RULE}, after {self.checkpoint})")
                        return
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# sacct


def sacct_rows(since: str, workdir: Path, job_ids: set[str], env: dict) -> list[dict]:
    """This run's jobs in the accounting database (waits for slurmdbd to have them all, final)."""
    fields = [
        "JobID",
        "Partition",
        "State",
        "AllocTRES",
        "Submit",
        "Start",
        "ElapsedRaw",
        "WorkDir",
        "Comment",
    ]
    rows = []
    for _ in range(60):
        p = sh(["sacct", "-a", "-X", "-P", "-n", "-S", since, "-o", ",".join(fields)], env=env)
        rows = [dict(zip(fields, r.split("|", len(fields) - 1), strict=False)) for r in p.stdout.splitlines()]
        rows = [r for r in rows if Path(r["WorkDir"]).resolve() == workdir.resolve()]
        seen = {r["JobID"] for r in rows}
        final = all(r["State"] not in ("PENDING", "RUNNING", "REQUEUED") for r in rows)
        if job_ids <= seen and final:
            return rows
        time.sleep(1)
    raise Failed(f"sacct lacks jobs {sorted(job_ids - {r['JobID'] for r in rows})} of this run")


def comment_of(rule: str, wildcards: str) -> str:
    """The plugin's --comment: rule_<rule>[_wildcards_<values joined by _>] ("/" -> "_")."""
    values = [kv.split("=", 1)[1] for kv in wildcards.split(", ") if "=" in kv]
    return f"rule_{rule}" + (f"_wildcards_{'_'.join(values)}".replace("/", "_") if values else "")


def rule_of(comment: str) -> str:
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def check_accounting(rows, jobs, stats, profile, canceller) -> dict:
    remote = {(j["name"], j["wildcards"]): j for j in jobs if j["kind"] == "rule"}
    local = {(j["name"], j["wildcards"]) for j in jobs if j["kind"] == "localrule"}
    problems = []
    # every job of the DAG ran: through SLURM, or as one of the workflow's localrules
    per_rule = Counter(n for n, _ in remote) + Counter(n for n, _ in local)
    for rule, n in stats.items():
        if per_rule[rule] != n:
            problems.append(f"{rule}: {n} jobs in the DAG, {per_rule[rule]} ran")
    # ... and each remote one completed in SLURM, in its partition, with its GPUs
    completed = Counter(rule_of(r["Comment"]) for r in rows if r["State"] == "COMPLETED")
    for rule, n in Counter(n for n, _ in remote).items():
        if completed[rule] != n:
            problems.append(f"{rule}: {n} SLURM jobs, {completed[rule]} COMPLETED in sacct")
    # GPUs per job, not per rule: segment asks for one for SAM only (resources: gpu=<function>)
    by_comment = {comment_of(n, w): j for (n, w), j in remote.items()}
    gpu_rules, gpu_jobs = set(), 0
    for r in rows:
        rule = rule_of(r["Comment"])
        if r["Partition"] != partition_of(profile, rule):
            problems.append(
                f"job {r['JobID']} ({rule}) in partition {r['Partition']}, "
                f"profile says {partition_of(profile, rule)}"
            )
        job = by_comment.get(r["Comment"])
        if job is None:
            problems.append(f"job {r['JobID']} ({r['Comment']}) is no job of this run's log")
            continue
        wants = int(job["resources"].get("gpu", 0) or 0)
        has = re.search(r"gres/gpu=(\d+)", r["AllocTRES"])
        got = int(has.group(1)) if has else 0
        if r["State"] == "COMPLETED" and wants:
            gpu_jobs += 1
            gpu_rules.add(rule)
        if r["State"] == "COMPLETED" and got != wants:
            problems.append(f"job {r['JobID']} ({r['Comment']}) asked for {wants} GPUs, got {r['AllocTRES']}")
    cancelled = [r for r in rows if r["State"].startswith("CANCELLED")]
    if canceller.job_id is None:
        problems.append(f"the {CANCEL_RULE} job ended before a checkpoint could be cancelled")
    elif [r["JobID"] for r in cancelled] != [canceller.job_id]:
        problems.append(f"cancelled jobs {[r['JobID'] for r in cancelled]}, expected only {canceller.job_id}")
    failed = [r for r in rows if r["State"] not in ("COMPLETED",) and r not in cancelled]
    if failed:
        problems.append(f"jobs not completed: {[(r['JobID'], r['State']) for r in failed]}")
    if problems:
        raise Failed("sacct:\n  " + "\n  ".join(problems))
    # per-job cost of going through SLURM: queue wait (submit -> start) and the shortest jobs' wall
    # time, which is the job step's own start-up (snakemake + imports) more than any work
    waits = [
        (datetime.fromisoformat(r["Start"]) - datetime.fromisoformat(r["Submit"])).total_seconds()
        for r in rows
        if r["Start"] not in ("", "Unknown", "None")
    ]
    elapsed = sorted(int(r["ElapsedRaw"] or 0) for r in rows if r["State"] == "COMPLETED")
    return {
        "median_queue_wait_s": float(np.median(waits)) if waits else None,
        "min_job_s": elapsed[0] if elapsed else None,
        "median_job_s": float(np.median(elapsed)) if elapsed else None,
        "slurm_job_s_total": sum(elapsed),
        "slurm_jobs": len(rows),
        "slurm_jobs_completed": sum(completed.values()),
        "local_jobs": len(local),
        "gpu_jobs": gpu_jobs,
        "gpu_rules": sorted(gpu_rules),
        "partitions": dict(Counter(r["Partition"] for r in rows)),
    }


# ---------------------------------------------------------------------------------------------
# results


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def hashed(path: Path) -> dict[str, str]:
    rows = read_rows(path)
    key = "path" if rows and "path" in rows[0] else next(iter(rows[0]))
    return {r[key]: r["sha256"] for r in rows if r.get("sha256")}


def numeric_leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numeric_leaves(v, f"{prefix}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numeric_leaves(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield prefix, float(obj)


def compare_results(local: Path, remote: Path) -> dict:
    from PIL import Image
    from safetensors.numpy import load_file

    problems, figures = [], defaultdict(int)
    # data stages and splits: byte-identical images (sha256 columns of the manifests)
    data = sorted(local.glob("results/data/**/manifest.csv")) + sorted(local.glob("results/splits/**/*.csv"))
    for m in data:
        rel = m.relative_to(local)
        if "sha256" not in (read_rows(m)[0] if read_rows(m) else {}):
            continue
        a, b = hashed(m), hashed(remote / rel)
        if a != b:
            diff = sum(a.get(k) != b.get(k) for k in set(a) | set(b))
            problems.append(f"{rel}: {diff} of {len(a)} rows differ in sha256")
        figures["data_images_identical"] += len(a)
    # the LoRA (resumed after scancel on the SLURM side): same tensors within LORA_ATOL
    for f in sorted(local.glob("results/lora/*/pytorch_lora_weights.safetensors")):
        a, b = load_file(f), load_file(remote / f.relative_to(local))
        if a.keys() != b.keys():
            problems.append(f"{f.relative_to(local)}: other tensor names")
            continue
        d = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
        figures["lora_max_abs_diff"] = max(figures["lora_max_abs_diff"], d)
        if d > LORA_ATOL:
            problems.append(f"{f.relative_to(local)}: max |diff| {d:.2e} > {LORA_ATOL}")
    # synthetic images: pixel MAE per image (sha256 equality counted, not required)
    for m in sorted(local.glob("results/synthetic/*/*/*/manifest.csv")):
        a, b = hashed(m), hashed(remote / m.relative_to(local))
        if set(a) != set(b):
            problems.append(f"{m.relative_to(local)}: other image list")
            continue
        for p in a:
            figures["synthetic_images"] += 1
            if a[p] == b[p]:
                figures["synthetic_identical"] += 1
                continue
            x = np.asarray(Image.open(local / p), dtype=np.float64)
            y = np.asarray(Image.open(remote / p), dtype=np.float64)
            mae = float(np.abs(x - y).mean())
            figures["synthetic_max_mae"] = max(figures["synthetic_max_mae"], mae)
            if mae > PIXEL_MAE:
                problems.append(f"{p}: pixel MAE {mae:.2f} > {PIXEL_MAE}")
    # metrics: every number of every eval JSON within METRIC_ATOL
    for j in sorted(local.glob("results/eval/**/*.json")):
        a = dict(numeric_leaves(json.loads(j.read_text())))
        b = dict(numeric_leaves(json.loads((remote / j.relative_to(local)).read_text())))
        for k in a:
            d = abs(a[k] - b.get(k, float("inf")))
            figures["metrics_compared"] += 1
            figures["metrics_max_abs_diff"] = max(figures["metrics_max_abs_diff"], d)
            if d > METRIC_ATOL and k.split("/")[-1] not in ("wall_s", "seconds", "time_s"):
                problems.append(f"{j.relative_to(local)}{k}: {a[k]} vs {b.get(k)}")
    if not figures["data_images_identical"] or not figures["metrics_compared"]:
        problems.append(f"nothing compared: {dict(figures)}")
    if problems:
        raise Failed("results differ from the local run:\n  " + "\n  ".join(problems[:20]))
    return dict(figures)


# ---------------------------------------------------------------------------------------------


def wait_local(proc: subprocess.Popen, t0: float, work: Path, figures: dict) -> None:
    if proc.wait() != 0:
        raise Failed(f"local run failed: see {work / 'local.log'}")
    figures["local_run_s"] = round(time.time() - t0, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="where the two runs go (default: a new temp dir)")
    ap.add_argument("--local", type=Path, help="reuse a finished local demo run in this workdir")
    ap.add_argument("--keep-cluster", action="store_true", help="leave the daemons running")
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="cores of the local run")
    ap.add_argument(
        "--concurrent", action="store_true", help="run the local reference beside the SLURM run, not before"
    )
    args = ap.parse_args(argv)

    t0 = time.time()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dermsynth-slurm-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    figures: dict = {}
    local_run = None
    log(f"workdir {work}")
    subprocess.run([str(CLUSTER), "start"], check=True, env=env)
    try:
        figures["cluster_start_s"] = round(time.time() - t0, 1)
        profile = test_profile(work / "profile")
        stats = job_stats(work / "slurm", env)

        local, local_run = args.local, None
        if local is None:
            local = work / "local"
            t_local = time.time()
            local_run = snakemake(
                ["--profile", str(ROOT / "profiles" / "local"), "--cores", str(args.cores)],
                local,
                work / "local.log",
                env,
            )
            if not args.concurrent:
                wait_local(local_run, t_local, work, figures)

        since = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
        t = time.time()
        stop = threading.Event()
        canceller = Canceller(work / "slurm", env, stop)
        canceller.start()
        p = snakemake(["--profile", str(work / "profile")], work / "slurm", work / "slurm.log", env)
        rc = p.wait()
        stop.set()
        figures["slurm_run_s"] = round(time.time() - t, 1)
        if local_run is not None and args.concurrent:
            wait_local(local_run, t_local, work, figures)
        if rc != 0:
            raise Failed(f"SLURM run failed (rc {rc}): see {work / 'slurm.log'}")
        log(f"SLURM run finished in {figures['slurm_run_s']} s")

        jobs = logged_jobs(work / "slurm.log")
        ids = set(re.findall(r"submitted with SLURM jobid (\d+)", (work / "slurm.log").read_text()))
        rows = sacct_rows(since, work / "slurm", ids, env)
        figures.update(check_accounting(rows, jobs, stats, profile, canceller))
        summary = next((work / "slurm").glob("results/lora/*/train_summary.json"))
        resumed = json.loads(summary.read_text()).get("resumed_from")
        if canceller.checkpoint and resumed is None:
            raise Failed(f"{CANCEL_RULE} was cancelled after {canceller.checkpoint} but did not resume")
        figures.update(
            cancelled_job=canceller.job_id,
            cancelled_after_s=canceller.at,
            cancelled_at=canceller.checkpoint,
            resumed_from_step=resumed,
        )
        log(
            f"sacct: {figures['slurm_jobs']} SLURM jobs ({figures['gpu_jobs']} with gres/gpu), "
            f"{figures['local_jobs']} local, job {canceller.job_id} cancelled and resumed at step {resumed}"
        )
        figures.update(compare_results(local, work / "slurm"))
        log("results equal the local run's (data sha256, LoRA, synthetic pixels, metrics)")
    except (Failed, subprocess.CalledProcessError, OSError, KeyError, ValueError) as e:
        log(f"FAILED: {e}")
        figures["failed"] = str(e).splitlines()[0]
    finally:
        if local_run is not None and local_run.poll() is None:
            local_run.terminate()
        if not args.keep_cluster:
            subprocess.run([str(CLUSTER), "stop"], check=False, env=env)
    figures["total_s"] = round(time.time() - t0, 1)
    figures["workdir"] = str(work)
    print(json.dumps(figures))
    return 1 if "failed" in figures else 0


if __name__ == "__main__":
    sys.exit(main())
