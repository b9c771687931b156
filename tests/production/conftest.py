"""Fixtures of the production-run tests: tiny generated inputs, a nightly output root built once
(two dates), and a real PostgreSQL server started on loopback for the JDBC statistics source.

The server comes from the Debian package (`make system-deps` installs it): `initdb` into a
temporary folder, `postgres` on 127.0.0.1 with a free port and its socket in that folder, every
wait bounded, stopped at teardown. PostgreSQL refuses to run as root, so under root the server
runs as the unprivileged user `nobody` (`runuser`), owning only its temporary folder.
"""
from __future__ import annotations

import datetime as dt
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from twotower_features.config import ExperimentConfig

D = dt.date(2026, 7, 5)  # the nightly date of the fixtures (the last generated day)
PREV = D - dt.timedelta(days=1)
FIRST_DAY = dt.date(2026, 6, 30)  # generated days: 06-30 .. 07-05
SMALL = {
    "name": "nightly-small",
    "window": {"validation_date": "2026-01-01", "train_days": 2},  # replaced by each nightly date
    "history": {"n": 5, "aggregations": ["mean"], "source": "simclr", "keep_lists": True},
    "embeddings": {"item_source": "dedup", "pca_components": 4, "kmeans_k": 3},
    "features": {"user": ["user_id", "pos_hist_mean", "neg_hist_mean", "user_ctr"], "item": ["item_id", "item_emb", "item_ctr", "creator_ctr"]},
    "output": {"tfrecord_shards": 1},
    "quality": {"max_quarantine_share": 0.05, "min_day_volume_ratio": 0.2, "max_day_volume_ratio": 5.0, "volume_lookback_days": 2},
}


def small_config(**sections) -> ExperimentConfig:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in SMALL.items()}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return ExperimentConfig.from_dict(data)


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="session")
def small_inputs(spark, tmp_path_factory) -> Path:
    """Six days of generated inputs (06-30 .. 07-05) with 1 % contract-breaking rows."""
    from twotower_features.generate import generate

    root = tmp_path_factory.mktemp("prod-inputs")
    generate(spark, str(root / "data"), users=60, items=40, days=6, start=FIRST_DAY, seed=11, embedding_dim=8, bad_row_share=0.01, progress=None)
    return root / "data"


@pytest.fixture(scope="session")
def nightly_root(spark, small_inputs, tmp_path_factory) -> Path:
    """An output root after `nightly` for PREV and then for D (file statistics). Tests that change
    it work on a copy (`copy_root`)."""
    from twotower.nightly import run_date

    root = tmp_path_factory.mktemp("prod-nightly") / "root"
    cfg = small_config()
    for day in (PREV, D):
        rec = run_date(spark, cfg, str(small_inputs), str(root), day, log=quiet)
        assert rec["status"] == "published", rec
    return root


def copy_root(src: Path, dst: Path) -> Path:
    """A copy of an output root (its links are relative, so the copy is self-contained)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ------------------------------------------------------------------------------ PostgreSQL
@dataclass
class PgServer:
    host: str
    port: int
    bin_dir: Path
    run_dir: Path
    superuser_password: str
    as_user: list[str]

    def psql(self, sql: str, *, db: str = "postgres", timeout: float = 60) -> str:
        env = {**os.environ, "PGPASSWORD": self.superuser_password}
        res = subprocess.run(
            [*self.as_user, str(self.bin_dir / "psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
        if res.returncode != 0:
            raise RuntimeError(f"psql failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def jdbc_url(self, db: str) -> str:
        return f"jdbc:postgresql://{self.host}:{self.port}/{db}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        pytest.skip("PostgreSQL server binaries not installed (/usr/lib/postgresql/*/bin): run `make system-deps`")
    bin_dir = Path(initdbs[-1]).parent
    run_dir = Path(tempfile.mkdtemp(prefix="twotower-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without `runuser`: PostgreSQL refuses to run as root")
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(run_dir, nobody.pw_uid, nobody.pw_gid)
        as_user = [runuser, "-u", "nobody", "--"]
    os.chmod(run_dir, 0o700)
    data, sock, log = run_dir / "data", run_dir / "sock", run_dir / "server.log"
    superuser_password = secrets.token_hex(12)
    pwfile = run_dir / "superuser.pw"
    pwfile.write_text(superuser_password + "\n")
    if as_user:
        os.chown(pwfile, nobody.pw_uid, nobody.pw_gid)
    os.chmod(pwfile, 0o600)

    def run(args, timeout):
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=timeout, cwd=run_dir)

    res = run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"], 180)
    if res.returncode != 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        pytest.fail(f"initdb failed: {res.stderr.strip()}")
    sock.mkdir()
    if as_user:
        os.chown(sock, nobody.pw_uid, nobody.pw_gid)
    port = _free_port()
    res = run([
        str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off -c full_page_writes=off -c max_connections=40",
    ], 90)
    server = PgServer("127.0.0.1", port, bin_dir, run_dir, superuser_password, as_user)
    try:
        if res.returncode != 0:
            pytest.fail(f"pg_ctl start failed: {res.stderr.strip()} {log.read_text() if log.exists() else ''}")
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-t", "5"], capture_output=True, timeout=30)
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL on 127.0.0.1:{port} not ready after 60 s: {log.read_text() if log.exists() else ''}")
            time.sleep(0.5)
        yield server
    finally:
        run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"], 60)
        shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class RecsysDb:
    server: PgServer
    db: str
    user: str
    password: str

    @property
    def url(self) -> str:
        return self.server.jdbc_url(self.db)


@pytest.fixture(scope="session")
def recsys_db(postgres_server, small_inputs) -> RecsysDb:
    """Database `recsys` owned by user `twotower` (its own password), holding the generated
    statistics tables, loaded with psql's COPY from CSV (independent of the code under test)."""
    import pyarrow.parquet as pq

    srv = postgres_server
    password = "pw-" + secrets.token_hex(10)
    srv.psql(f"CREATE ROLE twotower LOGIN PASSWORD '{password}'")
    srv.psql("CREATE DATABASE recsys OWNER twotower")
    columns = {"user_stats": "user_id", "item_stats": "item_id", "creator_stats": "creator_id"}
    csv_dir = srv.run_dir / "csv"
    csv_dir.mkdir()
    for table, key in columns.items():
        frame = pq.read_table(small_inputs / table).to_pandas()[[key, "dt", "ctr", "timespent"]]
        path = csv_dir / f"{table}.csv"
        frame.to_csv(path, index=False)
        os.chmod(path, 0o644)
        srv.psql(f"CREATE TABLE {table} ({key} text NOT NULL, dt date NOT NULL, ctr double precision, timespent double precision)", db="recsys")
        srv.psql(f"ALTER TABLE {table} OWNER TO twotower", db="recsys")
        srv.psql(f"\\copy {table} FROM '{path}' WITH (FORMAT csv, HEADER true)", db="recsys")
    os.chmod(csv_dir, 0o755)
    return RecsysDb(srv, "recsys", "twotower", password)
