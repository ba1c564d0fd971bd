"""The wheel on its own: installed into a fresh environment and run away from the checkout, it
finds its bundled example data, the demo DNABERT-S model code and the named SLURM profiles."""

import os
import site
import subprocess
import sys
from pathlib import Path

from source_tree import source_copy

ROOT = Path(__file__).resolve().parents[1]


def run(argv, **kwargs):
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
    return done


def test_an_installed_wheel_runs_without_the_checkout(tmp_path, demo_models, example_inputs):
    source = source_copy(tmp_path)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", source])
    wheel, = (tmp_path / "dist").glob("virnucpro-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    # Dependencies come from this environment. From inside a virtualenv --system-site-packages sees
    # only the base interpreter's packages, so this one's site-packages are listed in a .pth too
    # (plain paths: their own .pth files, e.g. an editable virnucpro, are not processed).
    inner = run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    outer = [p for p in (*site.getsitepackages(), site.getusersitepackages()) if Path(p).is_dir()]
    (Path(inner) / "virnucpro-test-outer-environment.pth").write_text("\n".join(outer) + "\n")
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    cli = venv / "bin" / "virnucpro-slurm"
    where = run([venv / "bin" / "python", "-c", "import virnucpro; print(virnucpro.__file__)"], cwd=elsewhere, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel's copy, not the checkout

    # a named profile shipped with the wheel (<prefix>/share/virnucpro/slurm_templates)
    run([cli, "submit", example_inputs, "--models", demo_models, "--workdir", "w", "--profile", "example-site",
         "--dry-run"], cwd=elsewhere, env=env)
    script = (elsewhere / "w" / "slurm" / "dry-run" / "esm2.sh").read_text()
    assert "#SBATCH --account=virology-lab" in script and "module load cuda/12.1" in script

    # the embedded default: bundled example data and demo models, demo model code included
    run([cli, "run", "--demo", "--quiet", "--workdir", "demo"], cwd=elsewhere, env=env)
    results = elsewhere / "demo" / "results"
    assert sorted(p.name for p in results.iterdir()) == ["index.tsv", "sample_a", "sample_b", "virnucpro_mqc.tsv"]
    assert (results / "sample_a" / "prediction_results.txt").read_text().startswith("Sequence_ID\t")
