"""The hostile corpus (issue 13): inputs a hostile or careless user gives rtgrid — YAML grids, options,
database URLs, files, checkpoints and SQL on both backends. For every case: the expected exit code (2 bad
input, 1 runtime failure), exactly one stderr line `rtgrid: error: …` naming the problem (and, where the
case says, the fix), no traceback, the database unchanged (SQLite byte-identical, PostgreSQL row-identical),
and bounded time and memory: the cases that could blow up run the real CLI in a subprocess under RLIMIT_AS
and a timeout; the others run in-process through the real Click group (cli_helpers.run_cli).

Also: truncated and bit-flipped real checkpoints (every one loads or answers one KernelInputError line),
and a SQLite file on read-only media (readers read it, writers get one line naming the file).
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_helpers import run_cli
from results_data import db_fingerprint

REPO_ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 1024 * 1024 * 1024  # bytes of address space for a subprocess case (the CLI needs ~300 MiB)
SUBPROCESS_TIMEOUT_S = 120  # a bound on a hang, not a speed test


def _billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _axes_bomb() -> str:
    """1 KiB that names 10^10 specs: ten axes of ten values each."""
    values = ", ".join(str(i) for i in range(10))
    axes = "\n".join(f"  {axis}: [{values}]" for axis in ("seed", "epochs", "blocks", "subset_size",
                                                          "params.lr", "params.batch_size", "params.momentum",
                                                          "params.weight_decay", "params.eval_images",
                                                          "params.input_size"))
    fixed = "fixed: {arch: tiny_resnet, dataset: digits, ood: noise-2, method: finetune, source: scratch}"
    return f"{fixed}\naxes:\n{axes}\n"


GOOD_FIXED = "fixed: {arch: tiny_resnet, dataset: digits, ood: noise-2, method: finetune, source: scratch, epochs: 1}\n"


@dataclass(frozen=True)
class Case:
    """One hostile input. `args` may hold {db} (the test database's URL) and {dir} (a scratch directory)."""

    id: str
    args: tuple[str, ...]
    says: str  # the problem, as the one line must name it
    fix: str = ""  # what to do, where the line must say it
    code: int = 2
    files: dict[str, str | bytes] = field(default_factory=dict)  # written into {dir} first
    subprocess: bool = False  # run under RLIMIT_AS and a timeout
    backends: tuple[str, ...] = ("sqlite",)


BOTH = ("sqlite", "postgresql")
PG = ("postgresql",)

YAML_CASES = [
    Case("yaml-billion-laughs", ("grid", "show", "{dir}/bomb.yaml"), "alias bomb", "write the grid's axes out",
         files={"bomb.yaml": _billion_laughs()}, subprocess=True),
    Case("yaml-billion-laughs-submit", ("submit", "{dir}/bomb.yaml", "--dry-run", "--db", "{db}"), "alias bomb",
         files={"bomb.yaml": _billion_laughs()}, subprocess=True),
    Case("yaml-10e10-specs", ("grid", "show", "{dir}/axes.yaml"), "10,000,000,000 specs", "--max-specs",
         files={"axes.yaml": _axes_bomb()}, subprocess=True),
    Case("yaml-10e10-specs-submit", ("submit", "{dir}/axes.yaml", "--dry-run", "--db", "{db}"), "above the limit",
         "--max-specs", files={"axes.yaml": _axes_bomb()}, subprocess=True),
    Case("yaml-over-max-specs", ("grid", "show", "{dir}/g.yaml", "--max-specs", "2"), "3 specs", "--max-specs 3",
         files={"g.yaml": GOOD_FIXED + "axes: {seed: [0, 1, 2]}\n"}),
    Case("yaml-recursive-anchor", ("grid", "show", "{dir}/r.yaml"), "refers to itself",
         files={"r.yaml": "fixed: &x {a: *x}\n"}),
    Case("yaml-deep-nesting", ("grid", "show", "{dir}/deep.yaml"), "malformed YAML",
         files={"deep.yaml": "fixed: " + "[" * 20000 + "]" * 20000 + "\n"}, subprocess=True),
    Case("yaml-too-large", ("grid", "show", "{dir}/big.yaml"), "too large for a grid file",
         files={"big.yaml": "# " + "x" * (5 * 1024 * 1024) + "\n"}, subprocess=True),
    Case("yaml-python-tag", ("grid", "show", "{dir}/tag.yaml"), "malformed YAML",
         files={"tag.yaml": "fixed: !!python/object/apply:os.system ['touch pwned']\n"}),
    Case("yaml-binary", ("grid", "show", "{dir}/bin.yaml"), "not UTF-8",
         files={"bin.yaml": bytes(range(128, 256)) * 4}),
    Case("yaml-top-level-list", ("grid", "show", "{dir}/list.yaml"), "must be a mapping",
         files={"list.yaml": "- 1\n- 2\n"}),
    Case("yaml-unknown-axis", ("grid", "show", "{dir}/ax.yaml"), "unknown axis", "known:",
         files={"ax.yaml": GOOD_FIXED + "axes: {colour: [red]}\n"}),
    Case("yaml-axis-not-list", ("grid", "show", "{dir}/ax.yaml"), "must be a non-empty list",
         files={"ax.yaml": GOOD_FIXED + "axes: {seed: 3}\n"}),
    Case("yaml-empty-axis", ("grid", "show", "{dir}/ax.yaml"), "must be a non-empty list",
         files={"ax.yaml": GOOD_FIXED + "axes: {seed: []}\n"}),
    Case("yaml-named-like-preset", ("submit", "{dir}/mine.yaml", "--dry-run", "--db", "{db}"),
         "is a preset's name", "give the file its own name",
         files={"mine.yaml": "name: smoke\n" + GOOD_FIXED + "axes: {seed: [0]}\n"}),
    Case("yaml-name-path-escape", ("submit", "{dir}/esc.yaml", "--dry-run", "--db", "{db}"),
         "esc.yaml:1 '../../../x'", "use 1-64 letters",  # file:line (grid-file errors name the line)
         files={"esc.yaml": "name: ../../../x\n" + GOOD_FIXED + "axes: {seed: [0]}\n"}),
    Case("yaml-name-escape-sequence", ("submit", "{dir}/ansi.yaml", "--dry-run", "--db", "{db}"),
         "'\\x1b[31mred'", "letters, digits",
         files={"ansi.yaml": 'name: "\\e[31mred"\n' + GOOD_FIXED + "axes: {seed: [0]}\n"}),
    Case("yaml-name-escape-sequence-show", ("grid", "show", "{dir}/ansi.yaml"), "'\\x1b]0;title\\x07'",
         files={"ansi.yaml": 'name: "\\e]0;title\\a"\n' + GOOD_FIXED + "axes: {seed: [0]}\n"}),
    Case("yaml-stem-not-a-name", ("submit", "{dir}/my grid.yaml", "--dry-run", "--db", "{db}"),
         "invalid grid name 'my grid'", "--experiment", files={"my grid.yaml": GOOD_FIXED + "axes: {seed: [0]}\n"}),
    Case("yaml-malformed", ("grid", "show", "{dir}/bad.yaml"), "malformed YAML in",
         files={"bad.yaml": "fixed: {arch: [\n"}),
    Case("yaml-huge-params-value", ("grid", "show", "{dir}/p.yaml"), "'params' must be a mapping",
         files={"p.yaml": "fixed: {arch: tiny_resnet, params: [" + ", ".join(["1"] * 50000) + "]}\n"}),
    Case("yaml-unknown-field", ("grid", "show", "{dir}/f.yaml"), "unknown field",
         files={"f.yaml": "fixed: {arch: tiny_resnet, colour: red}\naxes: {seed: [0]}\n"}),
    Case("yaml-missing-source-file", ("grid", "show", "{dir}/s.yaml"), "source file not found",
         files={"s.yaml": GOOD_FIXED.replace("source: scratch", "source: 'file:nope.pt'") + "axes: {seed: [0]}\n"}),
    Case("grid-unknown-name", ("grid", "show", "no-such-grid"), "unknown grid 'no-such-grid'", "not a preset"),
]

OPTION_CASES = [
    Case("max-failures-negative", ("submit", "smoke", "--max-failures", "-1", "--db", "{db}"), "--max-failures",
         "see rtgrid submit --help"),
    Case("max-concurrent-negative", ("submit", "smoke", "--max-concurrent", "-1", "--db", "{db}"),
         "--max-concurrent", "see rtgrid submit --help"),
    Case("max-concurrent-zero", ("resume", "smoke-mini", "--max-concurrent", "0", "--db", "{db}"), "--max-concurrent"),
    Case("pack-size-zero", ("submit", "smoke", "--pack-size", "0", "--db", "{db}"), "--pack-size"),
    Case("max-failures-text", ("submit", "smoke", "--max-failures", "lots", "--db", "{db}"), "'lots' is not a valid"),
    Case("max-specs-zero", ("grid", "show", "smoke", "--max-specs", "0"), "--max-specs"),
    Case("max-specs-below-preset", ("submit", "smoke", "--dry-run", "--max-specs", "10", "--db", "{db}"),
         "preset smoke has 61 specs", "--max-specs 61"),
    Case("run-spec-threads-negative", ("run-spec", "--preset", "smoke", "--threads", "-3"), "--threads",
         "see rtgrid run-spec --help"),
    Case("run-spec-index-negative", ("run-spec", "--preset", "smoke", "--index", "-1"), "--index"),
    Case("run-spec-index-outside", ("run-spec", "--preset", "smoke", "--index", "99999"), "outside the grid"),
    Case("timeout-zero", ("query", "SELECT 1", "--timeout", "0", "--db", "{db}"), "--timeout must be a positive"),
    Case("timeout-nan", ("status", "--timeout", "nan", "--db", "{db}"), "--timeout must be a positive"),
    Case("report-blocks-negative", ("report", "utrera-table7", "--experiment", "utrera-mini", "--blocks", "-1",
                                    "--db", "{db}"), "--blocks"),
    Case("report-unknown", ("report", "nope", "--experiment", "x", "--db", "{db}"), "unknown report 'nope'",
         "known: utrera-table7"),
    Case("plot-subset-text", ("plot", "learning-curve", "--experiment", "utrera-mini", "-o", "{dir}/x.png",
                              "--subset-size", "many", "--db", "{db}"), "--subset-size must be an integer"),
    Case("plot-output-missing-dir", ("plot", "er", "--experiment", "smoke-mini", "-o", "{dir}/no/such/x.png",
                                     "--db", "{db}"), "does not exist"),
    Case("experiment-301-chars", ("submit", "smoke", "--dry-run", "--experiment", "a" * 301, "--db", "{db}"),
         "(301 characters)", "use 1-64 letters"),
    Case("experiment-path-escape", ("submit", "smoke", "--dry-run", "--experiment", "../../../x", "--db", "{db}"),
         "invalid experiment name '../../../x'"),
    Case("experiment-escape-sequence", ("status", "\x1b[2J\x1b[31mred", "--db", "{db}"), "'\\x1b[2J\\x1b[31mred'"),
    Case("experiment-leading-dot", ("export", ".hidden", "--db", "{db}"), "invalid experiment name '.hidden'"),
    Case("experiment-empty", ("cancel", "", "--db", "{db}"), "invalid experiment name ''"),
    Case("experiment-slash", ("report", "er", "--experiment", "a/b", "--db", "{db}"), "invalid experiment name"),
    Case("experiment-newline", ("resume", "x\ny", "--db", "{db}"), "'x\\ny'"),
    Case("er-testbed-experiment-nul", ("er", "fit", "--id", "digits", "--ood", "noise-2", "--experiment", "smoke-mini",
                                       "--testbed-experiment", "a\x7fb", "--db", "{db}"), "invalid experiment name"),
    Case("unknown-experiment", ("resume", "no-such-experiment", "--db", "{db}"), "unknown experiment"),
]

URL_CASES = [
    Case("url-port-not-a-number", ("status", "--db", "postgresql://u:secret@127.0.0.1:abc/db"),
         "the port must be a number", "postgresql://user@host:5432/db"),
    Case("url-unknown-scheme", ("status", "--db", "mysql://u@127.0.0.1/x"), "unsupported database URL mysql",
         "postgresql://user@host:5432/db"),
    Case("url-garbage", ("query", "SELECT 1", "--db", "::::"), "invalid database URL"),
    Case("url-refused-port", ("status", "--db", "postgresql://u@127.0.0.1:1/x"), "cannot open database"),
    Case("sqlite-missing-file", ("status", "--db", "sqlite:///{dir}/none.sqlite"), "no rtgrid database",
         "rtgrid db upgrade"),
    Case("sqlite-directory", ("query", "SELECT 1", "--db", "sqlite:///{dir}"), "no rtgrid database"),
    Case("sqlite-not-a-database", ("status", "--db", "sqlite:///{dir}/text.sqlite"), "not a database",
         files={"text.sqlite": "hello, not a database\n" * 100}),
    Case("sqlite-not-a-database-writer", ("cancel", "x", "--db", "sqlite:///{dir}/text.sqlite"), "not a database",
         files={"text.sqlite": "hello, not a database\n" * 100}),
]

FILE_CASES = [
    Case("csv-binary", ("er", "fit", "--id", "digits", "--ood", "noise-2", "--csv", "{dir}/b.csv", "--experiment",
                        "smoke-mini", "--db", "{db}"), "not UTF-8", files={"b.csv": bytes(range(256)) * 8}),
    Case("csv-huge-field", ("er", "fit", "--id", "digits", "--ood", "noise-2", "--csv", "{dir}/h.csv",
                            "--experiment", "smoke-mini", "--db", "{db}"), "field larger than field limit",
         files={"h.csv": "id_acc,ood_acc\n0.5," + "9" * 500_000 + "\n"}, subprocess=True),
    Case("csv-too-large", ("er", "fit", "--id", "digits", "--ood", "noise-2", "--csv", "{dir}/t.csv",
                           "--experiment", "smoke-mini", "--db", "{db}"), "bytes, over the",
         files={"t.csv": "id_acc,ood_acc\n" + "0.5,0.4\n" * 2_500_000}, subprocess=True),
    Case("csv-nul", ("er", "fit", "--id", "digits", "--ood", "noise-2", "--csv", "{dir}/n.csv", "--experiment",
                     "smoke-mini", "--db", "{db}"), "not numbers", files={"n.csv": "id_acc,ood_acc\n0.5,\x00\n"}),
    Case("csv-percentages", ("er", "fit", "--id", "digits", "--ood", "noise-2", "--csv", "{dir}/p.csv",
                             "--experiment", "smoke-mini", "--db", "{db}"), "fractions in (0, 1)",
         files={"p.csv": "id_acc,ood_acc\n50,40\n60,50\n70,60\n"}),
    Case("csv-missing", ("er", "fit", "--id", "digits", "--ood", "noise-2", "--csv", "{dir}/none.csv",
                         "--experiment", "smoke-mini", "--db", "{db}"), "cannot read testbed CSV"),
    Case("source-path-text-file", ("run-spec", "--preset", "smoke", "--index", "9", "--source-path", "{dir}/x.pt",
                                   "--threads", "1", "--artifacts", "{dir}/art"), "unreadable",
         "rtgrid sources convert", files={"x.pt": "hello\n"}),
    Case("source-path-missing", ("run-spec", "--preset", "smoke", "--index", "9", "--source-path", "{dir}/no.pt",
                                 "--threads", "1", "--artifacts", "{dir}/art"), "not"),
    Case("sources-convert-text", ("sources", "convert", "{dir}/x.pt", "{dir}/out.pt"), "x.pt",
         files={"x.pt": "hello\n"}),
]

SQL_CASES = [
    Case("sql-array-constructor", ("query", "SELECT ARRAY[pg_terminate_backend(pg_backend_pid())]", "--db", "{db}"),
         "pg_terminate_backend", "read-only role", backends=PG),  # the bypass of the old lexer; no SQLite syntax
    Case("sql-cr-comment", ("query", "SELECT 1 AS a -- hidden\r, pg_read_file('/etc/hostname')", "--db", "{db}"),
         "pg_read_file", "read-only role", backends=PG),
    Case("sql-runs-sql-text", ("query", "SELECT query_to_xml('SELECT 1', true, true, '')", "--db", "{db}"),
         "query_to_xml", backends=BOTH),
    Case("sql-table-to-xml", ("query", "SELECT table_to_xml('pg_authid', true, true, '')", "--db", "{db}"),
         "table_to_xml", backends=BOTH),
    Case("sql-ts-stat", ("query", "SELECT * FROM ts_stat('SELECT 1')", "--db", "{db}"), "ts_stat", backends=BOTH),
    Case("sql-read-file", ("query", "SELECT pg_read_file('/etc/hostname')", "--db", "{db}"), "pg_read_file",
         backends=BOTH),
    Case("sql-ls-dir", ("query", "SELECT * FROM pg_ls_dir('.')", "--db", "{db}"), "pg_ls_dir", backends=BOTH),
    Case("sql-lo-import", ("query", "SELECT lo_import('/etc/hostname')", "--db", "{db}"), "lo_import", backends=BOTH),
    Case("sql-set-config", ("query", "SELECT set_config('statement_timeout', '0', false)", "--db", "{db}"),
         "set_config", backends=BOTH),
    Case("sql-advisory-lock", ("query", "SELECT pg_advisory_lock(42)", "--db", "{db}"), "pg_advisory_lock",
         backends=BOTH),
    Case("sql-reload-conf", ("query", "SELECT pg_reload_conf()", "--db", "{db}"), "pg_reload_conf", backends=BOTH),
    Case("sql-catalog-secrets", ("query", "SELECT rolpassword FROM pg_authid", "--db", "{db}"), "pg_authid",
         backends=BOTH),
    Case("sql-delete", ("query", "DELETE FROM trials", "--db", "{db}"), "read-only", backends=BOTH),
    Case("sql-two-statements", ("query", "SELECT 1; DROP TABLE trials", "--db", "{db}"), "one statement",
         backends=BOTH),
    Case("sql-syntax", ("query", "SELEC 1", "--db", "{db}"), "syntax error", backends=BOTH),
    Case("sql-too-long", ("query", "SELECT " + "1+" * 30_000 + "1", "--db", "{db}"), "over rtgrid query's",
         "psql", subprocess=True, backends=BOTH),
    Case("sql-deep-nesting-pg", ("query", "SELECT " + "abs(" * 3000 + "1" + ")" * 3000, "--db", "{db}"),
         "nested too deeply", "simplify it", subprocess=True, backends=PG),
    Case("sql-deep-nesting-sqlite", ("query", "SELECT " + "abs(" * 3000 + "1" + ")" * 3000, "--db", "{db}"),
         "parser stack overflow", subprocess=True),
    Case("sql-pragma-write", ("query", "PRAGMA user_version = 7", "--db", "{db}"), "refused"),
    Case("sql-attach", ("query", "ATTACH DATABASE '{dir}/x.sqlite' AS x", "--db", "{db}"), "refused"),
    Case("sql-load-extension", ("query", "SELECT load_extension('/tmp/x.so')", "--db", "{db}"), "refused"),
    Case("sql-runaway-sqlite", ("query", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
                                         "SELECT count(*) FROM r", "--timeout", "1", "--db", "{db}"),
         "stopped after 1 s", "raise --timeout"),
    Case("sql-runaway-pg", ("query", "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) "
                                     "b, generate_series(1, 100000) c", "--timeout", "1", "--db", "{db}"),
         "stopped after 1 s", "raise --timeout", backends=PG),
]

CASES = YAML_CASES + OPTION_CASES + URL_CASES + FILE_CASES + SQL_CASES
PARAMS = [pytest.param(case, backend, id=f"{case.id}-{backend}",
                       marks=[pytest.mark.postgres] if backend == "postgresql" else [])
          for case in CASES for backend in case.backends]


def test_the_corpus_is_large_and_its_ids_unique() -> None:
    assert len(PARAMS) >= 60 and len({case.id for case in CASES}) == len(CASES)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run(case: Case, args: list[str], where: Path) -> tuple[int, str]:
    """(exit code, stderr) of `rtgrid ARGS`: in a memory-limited subprocess, or in-process via Click."""
    if not case.subprocess:
        result = run_cli(*args, expect=None)
        return result.exit_code, result.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RTGRID_LOG_DIR": str(where / "logs")}
    done = subprocess.run([sys.executable, "-c", "from cli import main; main()", *args], cwd=where, env=env,
                          preexec_fn=_limit_memory, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    return done.returncode, done.stderr


@pytest.mark.parametrize(("case", "backend"), PARAMS)
def test_hostile_input_answers_one_line(case: Case, backend: str, tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("results_sqlite" if backend == "sqlite" else "results_postgres")
    for name, content in case.files.items():
        target = tmp_path / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    args = [arg.replace("{db}", url).replace("{dir}", str(tmp_path)) for arg in case.args]
    before = db_fingerprint(url)
    code, stderr = _run(case, args, tmp_path)
    lines = stderr.strip().splitlines()
    assert code == case.code, (case.id, code, stderr[-2000:])
    assert "Traceback" not in stderr and len(lines) == 1, (case.id, stderr[-2000:])
    line = lines[0]
    assert line.startswith("rtgrid: error: ") and case.says in line, (case.id, line)
    assert case.fix in line, (case.id, line)
    assert "\x1b" not in line and "secret" not in line, (case.id, line)  # escaped names, masked passwords
    assert db_fingerprint(url) == before, case.id
    assert not (tmp_path / "pwned").exists()


# --- checkpoints: truncated and bit-flipped real files ----------------------------------------------------


def _damaged_copies(data: bytes, count: int, seed: int = 13) -> list[tuple[str, bytes]]:
    """Truncations at spread-out points and bit flips aimed at the zip headers, the pickle and the tensors."""
    rng = random.Random(seed)
    copies = [(f"truncated-{n}", data[:n]) for n in sorted({0, 1, 22, 100, len(data) // 2, len(data) - 1,
                                                            *(rng.randrange(len(data)) for _ in range(count // 2))})]
    regions = [(0, 4096), (max(0, len(data) - 4096), len(data)), (0, len(data))]
    for i in range(count // 2):
        flipped = bytearray(data)
        low, high = regions[i % len(regions)]
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(low, high)
            flipped[at] ^= 1 << rng.randrange(8)
        copies.append((f"flipped-{i}", bytes(flipped)))
    return copies


def test_damaged_checkpoints_load_or_answer_one_line(tmp_path: Path) -> None:
    import torch

    from workers.errors import KernelInputError
    from workers.models import build_model, load_checkpoint_meta, load_source_model, save_source_checkpoint

    torch.manual_seed(0)
    original = tmp_path / "source.pt"
    save_source_checkpoint(build_model("tiny_resnet", 10), original, {"epochs": 1})
    outcomes = {"loaded": 0, "refused": 0}
    loaders: list[Callable[[Path], object]] = [lambda p: load_source_model("tiny_resnet", p), load_checkpoint_meta]
    for name, data in _damaged_copies(original.read_bytes(), count=160):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        for load in loaders:
            try:
                load(path)
                outcomes["loaded"] += 1
            except KernelInputError as exc:  # anything else (IndexError, KeyError, …) fails the test
                assert "\n" not in str(exc) and str(path) in str(exc), (name, str(exc))
                outcomes["refused"] += 1
        path.unlink()
    assert outcomes["refused"] >= 100, outcomes  # the damage reached the structure, not only tensor bytes


def test_damaged_checkpoint_through_the_cli_is_one_line(tmp_path: Path) -> None:
    import torch

    from workers.models import build_model, save_source_checkpoint

    torch.manual_seed(0)
    original = tmp_path / "source.pt"
    save_source_checkpoint(build_model("tiny_resnet", 10), original, {})
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(original.read_bytes()[: original.stat().st_size // 3])
    result = run_cli("run-spec", "--preset", "smoke", "--index", "9", "--source-path", str(damaged), "--threads", "1",
                     "--artifacts", str(tmp_path / "art"), expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged.pt" in lines[0] and "Traceback" not in result.stderr, result.stderr


# --- SQLite on read-only media ------------------------------------------------------------------------------


def _can_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="needs unshare -rm (user + mount namespaces)")
def test_sqlite_on_read_only_media(tmp_path: Path) -> None:
    """Readers open the file immutable; a writer's one line names the file. The mount lives in a private
    namespace of the subprocess and vanishes with it."""
    source, mount = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    mount.mkdir()
    run_cli("submit", "smoke", "--record-only", "--db", f"sqlite:///{source / 'r.sqlite'}")
    url = f"sqlite:///{mount / 'r.sqlite'}"
    before = sorted((p.name, p.read_bytes()) for p in source.iterdir())
    rtgrid = f"{sys.executable} -c 'from cli import main; main()'"
    script = (f"mount --bind {source} {mount} && mount -o remount,ro,bind {mount} && "
              f"{rtgrid} status --db {url} && {rtgrid} query 'SELECT count(*) AS n FROM trials' --format csv "
              f"--db {url} && {rtgrid} export smoke --db {url} | wc -l && {rtgrid} cancel smoke --db {url}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "61 trials" in done.stdout and "n\n61\n" in done.stdout and "62\n" in done.stdout, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "r.sqlite" in lines[0] and "read-only media" in lines[0], done.stderr
    assert sorted((p.name, p.read_bytes()) for p in source.iterdir()) == before


def test_database_is_locked_names_the_file(tmp_path: Path) -> None:
    """SQLite's bare "database is locked" (a real lock held by another connection) gets the file and the fix."""
    import sqlite3

    from db.errors import one_line
    from orchestrator.console.store import close_all, explain_database_error, open_repository

    path = tmp_path / "locked.sqlite"
    run_cli("submit", "smoke", "--record-only", "--db", f"sqlite:///{path}")
    holder = sqlite3.connect(path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        open_repository(f"sqlite:///{path}", write=True)
        waiter = sqlite3.connect(path, timeout=0)
        with pytest.raises(sqlite3.OperationalError) as locked:
            waiter.execute("BEGIN IMMEDIATE")
        waiter.close()
        line = explain_database_error(one_line(locked.value))
        assert line.startswith("database is locked (sqlite:///") and "locked.sqlite" in line and "retry" in line, line
    finally:
        holder.rollback()
        holder.close()
        close_all()
