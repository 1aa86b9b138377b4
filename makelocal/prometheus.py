"""A local Prometheus for `makelocal up --prometheus`: the scrape configuration and alert
rules of deploy/prometheus, pointed at the ports this stack listens on."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from makelocal.cluster import Service

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


def binary() -> str | None:
    return shutil.which("prometheus")


def write_config(path: Path, targets: dict[str, list[str]], interval: str = "5s") -> Path:
    """deploy/prometheus/prometheus.yml with each job's targets replaced (job name ->
    host:port list) and the rules file by absolute path."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def service(executable: str, data_dir: Path, port: int, config: Path, log: Path) -> Service:
    return Service("prometheus", "prometheus", port, {}, log, program=[
        executable, f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=7d"])
