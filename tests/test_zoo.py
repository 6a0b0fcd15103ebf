"""The RL Zoo plugin: registration, train / enjoy through the zoo, Optuna, and the hub (offline)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from stable_baselines3 import PPO

from sb3_pgext import CVPG, PPOKL, OffPAC
from sb3_pgext.zoo import ALGOS, register
from sb3_pgext.zoo.cli import main
from sb3_pgext.zoo.hyperparams_opt import CONVERTERS, SAMPLERS

REVISION = "0123456789abcdef0123456789abcdef01234567"
# Subprocesses: one torch thread, no network, the hub cache given per test
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def run_zoo(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """``python -m sb3_pgext.zoo args...`` in a subprocess; its output, after checking it succeeded."""
    result = subprocess.run(
        [sys.executable, "-m", "sb3_pgext.zoo", *args], capture_output=True, text=True, env=env or ENV, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def zoo(*args: str) -> None:
    """``python -m sb3_pgext.zoo args...`` in this process."""
    main(list(args))


def saved_config(log_dir: Path, env_id: str) -> dict:
    """The hyperparameters the zoo saved for a run (config.yml is a list of pairs)."""
    with open(log_dir / env_id / "config.yml") as file:
        return dict(yaml.load(file, Loader=yaml.UnsafeLoader))


def lay_out_hub_repo(cache: Path, repo_id: str, files: Path) -> None:
    """Put ``files`` in a local Hugging Face cache as the snapshot ``refs/main`` points to."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)


def test_register_keeps_sb3_algorithms():
    import rl_zoo3.hyperparams_opt as zoo_opt
    import rl_zoo3.utils as zoo_utils

    register()
    register()  # idempotent
    assert {name: zoo_utils.ALGOS[name] for name in ("ppokl", "offpac", "cvpg")} == {"ppokl": PPOKL, "offpac": OffPAC, "cvpg": CVPG}
    assert ALGOS == {"ppokl": PPOKL, "offpac": OffPAC, "cvpg": CVPG}
    assert zoo_utils.ALGOS["ppo"] is PPO and "tqc" in zoo_utils.ALGOS
    for name in ALGOS:
        assert zoo_opt.HYPERPARAMS_SAMPLER[name] is SAMPLERS[name]
        assert zoo_opt.HYPERPARAMS_CONVERTER[name] is CONVERTERS[name]
    assert "ppo" in zoo_opt.HYPERPARAMS_SAMPLER


def test_registry_entries_are_complete():
    """Each registered algorithm has its hyperparameter file, a sampler, SB3 peers the zoo knows, and its class name."""
    import rl_zoo3.utils as zoo_utils

    from sb3_pgext.common.hyperparams import hyperparams_path
    from sb3_pgext.registry import ALGORITHMS
    from sb3_pgext.suite.config import DEFAULT_PEERS

    register()
    assert set(ALGORITHMS) == {"ppokl", "cvpg", "offpac"} and DEFAULT_PEERS == {"ppokl": ["ppo"], "cvpg": ["ppo"], "offpac": ["sac", "dqn"]}
    for name, algorithm in ALGORITHMS.items():
        assert name == algorithm.display_name.lower() and hyperparams_path(name).is_file() and name in SAMPLERS
        assert algorithm.peers and all(peer in zoo_utils.ALGOS and peer not in ALGORITHMS for peer in algorithm.peers)


def test_experiment_manager_patches_match_upstream():
    """
    register() replaces ExperimentManager's private _preprocess_schedules and learn (no supported way in rl_zoo3;
    docs/development.md): this fails when the zoo changes what they rely on.
    """
    import inspect

    from rl_zoo3.exp_manager import ExperimentManager

    register()
    assert isinstance(inspect.getattr_static(ExperimentManager, "_preprocess_schedules"), staticmethod)
    schedules = ExperimentManager._preprocess_schedules._sb3_pgext_original
    assert list(inspect.signature(schedules).parameters) == ["hyperparams"]
    learn = ExperimentManager.learn._sb3_pgext_original
    assert list(inspect.signature(learn).parameters) == ["self", "model"]
    assert "self.callbacks" in inspect.getsource(learn) and "save_path" in inspect.getsource(ExperimentManager)
    # the zoo still fails on None without the patch: when it stops failing, the patch can go
    with pytest.raises(ValueError):
        schedules({"clip_range": None})


def test_hub_patches_match_upstream():
    """
    The hub fixes (sb3_pgext/zoo/hub.py) wrap public names of huggingface_sb3 and huggingface_hub that rl_zoo3's
    scripts import when they start: this fails when those names, or the scripts' imports of them, change.
    """
    import importlib
    import inspect

    import huggingface_hub.repocard
    import huggingface_sb3
    import rl_zoo3

    register()
    scripts = Path(rl_zoo3.__file__).parent
    load_source, push_source = (scripts / "load_from_hub.py").read_text(), (scripts / "push_to_hub.py").read_text()
    assert "from huggingface_sb3 import" in load_source and "load_from_hub" in load_source and "except HTTPError:" in load_source
    assert "from requests.exceptions import HTTPError" in load_source
    assert "from huggingface_hub.repocard import metadata_save" in push_source and "import HfApi" in push_source
    assert "generate_metadata" in push_source and "pip install rl_zoo3" in push_source and "python -m rl_zoo3." in push_source
    original = huggingface_sb3.load_from_hub._sb3_pgext_original
    assert list(inspect.signature(original).parameters) == ["repo_id", "filename"]
    original = huggingface_hub.repocard.metadata_save._sb3_pgext_original
    assert list(inspect.signature(original).parameters) == ["local_path", "data"]
    hf_push = importlib.import_module("huggingface_sb3.push_to_hub")
    assert list(inspect.signature(hf_push._generate_metadata).parameters) == ["model_name", "env_id", "mean_reward", "std_reward"]


def test_null_schedules_pass_through_the_zoo():
    """A stored PPOKL trial with clip_range None (penalty only) must not break --trial-id."""
    from rl_zoo3.exp_manager import ExperimentManager

    register()
    converted = ExperimentManager._preprocess_schedules({"clip_range": None, "learning_rate": "lin_0.001", "n_steps": 8})
    assert converted["clip_range"] is None and converted["n_steps"] == 8
    assert converted["learning_rate"](1.0) == pytest.approx(0.001) and converted["learning_rate"](0.5) == pytest.approx(0.0005)


@pytest.mark.parametrize(
    "algo, env_id, steps",
    [("ppokl", "CartPole-v1", 512), ("cvpg", "Pendulum-v1", 512), ("offpac", "Pendulum-v1", 300)],
)
def test_train_and_enjoy_through_the_zoo(tmp_path, algo, env_id, steps):
    """
    The package's yml is read without --conf-file, -params overrides it (the PPO family's horizon-aware value
    function included), enjoy replays the agent.
    """
    logs = tmp_path / "logs"
    extra = [] if algo == "offpac" else ["horizon_aware_value:True"]
    zoo("train", "--algo", algo, "--env", env_id, "-n", str(steps), "-f", str(logs), "--eval-freq", "-1",
        "--seed", "1", "-params", "policy_kwargs:dict(net_arch=[16])", *extra, "--num-threads", "1")  # fmt: skip
    run_dir = logs / algo / f"{env_id}_1"
    assert (run_dir / f"{env_id}.zip").is_file()
    config = saved_config(run_dir, env_id)
    if extra:
        assert config["horizon_aware_value"] is True
        model = ALGOS[algo].load(run_dir / f"{env_id}.zip")
        assert model.horizon_aware_value and model.policy.value_net.linear.out_features == 2
    with open(Path(__file__).parents[1] / "hyperparams" / f"{algo}.yml") as file:
        entry = yaml.safe_load(file)[env_id]
    assert config["policy_kwargs"]["net_arch"] == [16]  # the override
    for key in set(entry) - {"policy_kwargs"}:  # everything else is the package's entry
        assert config[key] == entry[key], key
    zoo("enjoy", "--algo", algo, "--env", env_id, "-f", str(logs), "--no-render", "-n", "200", "--num-threads", "1")


def test_conf_file_and_sb3_algorithms_keep_working(tmp_path):
    custom = tmp_path / "custom.yml"
    custom.write_text("CartPole-v1:\n  n_timesteps: 256\n  policy: MlpPolicy\n  n_steps: 64\n  kl_target: 0.123\n")
    logs = tmp_path / "logs"
    zoo("train", "--algo", "ppokl", "--env", "CartPole-v1", "-f", str(logs), "--conf-file", str(custom), "--eval-freq", "-1")
    assert saved_config(logs / "ppokl" / "CartPole-v1_1", "CartPole-v1")["kl_target"] == 0.123
    # SB3's PPO still reads the zoo's own file
    zoo("train", "--algo", "ppo", "--env", "CartPole-v1", "-n", "256", "-f", str(logs), "--eval-freq", "-1")
    assert saved_config(logs / "ppo" / "CartPole-v1_1", "CartPole-v1")["n_envs"] == 8  # rl_zoo3's ppo.yml entry


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_sampler_builds_models_and_converts_back(algo, env_id):
    """Each sampled set of hyperparameters builds a model; its trial's raw params convert to the same set (--trial-id)."""
    import gymnasium as gym

    env = gym.make(env_id)
    n_actions = env.action_space.shape[0] if isinstance(env.action_space, gym.spaces.Box) else 0
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    estimators, optimizers = set(), set()
    for _ in range(8):
        trial = study.ask()
        kwargs = SAMPLERS[algo](trial, n_actions, 1, {"using_her_replay_buffer": False, "her_kwargs": {}})
        assert CONVERTERS[algo](trial.params) == kwargs
        assert trial.user_attrs["worker"].endswith(f":{os.getpid()}")
        estimators.add(kwargs.get("actor_gradient"))
        model = ALGOS[algo]("MlpPolicy", env, **kwargs)
        if algo == "cvpg":  # the entry's discount, λ and network stay; the step sizes and the critic are drawn
            assert not {"one_minus_gamma", "net_arch", "policy_kwargs"} & (set(trial.params) | set(kwargs))
            assert (model.n_steps, model.batch_size) == (2 ** trial.params["n_steps_pow"], 2 ** trial.params["batch_size_pow"])
            steps = trial.params.get("qf_gradient_steps", trial.params.get("qf_lbfgs_iterations"))
            assert (model.qf_optimizer, model.qf_gradient_steps, model.eta) == (trial.params["qf_optimizer"], steps, trial.params["eta"])
            optimizers.add(model.qf_optimizer)
        else:
            assert model.gamma == pytest.approx(1 - trial.params["one_minus_gamma"])
        if algo == "ppokl":
            assert model.horizon_aware_value == trial.params["horizon_aware_value"]
        study.tell(trial, 0.0)
    if algo == "cvpg":
        assert optimizers == {"adam", "lbfgs"}
    if algo == "offpac":  # the estimators offered match the action space
        assert estimators <= ({"reparameterization", "likelihood"} if n_actions else {"expected", "likelihood"})


def tune_with_two_workers(tmp_path: Path, algo: str, env_id: str, storage: str, study_storage, max_trials: int = 6):
    """Two zoo workers tune one study in ``storage`` up to ``--max-total-trials``; the study's trials, checked."""
    args = ["train", "--algo", algo, "--env", env_id, "-n", "64", "-optimize", "--storage", storage,
            "--study-name", "shared", "--n-trials", str(max_trials), "--max-total-trials", str(max_trials),
            "--sampler", "random", "--pruner", "none", "--n-evaluations", "1", "--eval-episodes", "1",
            "-params", "n_envs:1", "--num-threads", "1", "--no-optim-plots"]  # fmt: skip
    workers = [
        subprocess.Popen([sys.executable, "-m", "sb3_pgext.zoo", *args, "--seed", str(seed), "-f", str(tmp_path / f"logs{seed}")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)  # fmt: skip
        for seed in (1, 2)
    ]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), "\n".join(output[-2000:] for output in outputs)
    trials = optuna.load_study(study_name="shared", storage=study_storage).get_trials(deepcopy=False)
    # MaxTrialsCallback stops each worker after its trial once the study holds max_trials; a worker can
    # begin one more trial between the other's check and its own, hence at most one extra per extra worker
    assert max_trials <= len(trials) <= max_trials + 1
    assert sorted(trial.number for trial in trials) == list(range(len(trials)))
    assert all(trial.state.is_finished() for trial in trials)
    assert len({trial.user_attrs["worker"] for trial in trials}) == 2  # both processes ran trials of the one study
    return trials


def test_two_workers_share_one_journal_study(tmp_path):
    """Two processes, one JournalStorage file, one study: trials are numbered once and stop at --max-total-trials."""
    storage = tmp_path / "study.log"
    study_storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage)))
    trials = tune_with_two_workers(tmp_path, "ppokl", "CartPole-v1", str(storage), study_storage)

    # --trial-id trains with that trial's hyperparameters
    chosen = trials[1]
    logs = tmp_path / "best"
    zoo("train", "--algo", "ppokl", "--env", "CartPole-v1", "-n", "64", "--storage", str(storage), "--study-name", "shared",
        "--trial-id", "1", "-f", str(logs), "--eval-freq", "-1", "-params", "n_envs:1")  # fmt: skip
    config = saved_config(logs / "ppokl" / "CartPole-v1_1", "CartPole-v1")
    assert config["kl_target"] == chosen.params["kl_target"]
    assert config["n_steps"] == 2 ** chosen.params["n_steps_pow"]


def test_push_to_hub_then_load_from_hub_and_enjoy_offline(tmp_path, monkeypatch):
    """
    push_to_hub with the hub API replaced (it records the folder it would upload), the upload laid out as
    a local hub cache, then load_from_hub and enjoy from that cache with HF_HUB_OFFLINE=1. Acrobot's
    entry normalises observations: vec_normalize.pkl travels too.
    """
    import huggingface_hub

    logs = tmp_path / "logs"
    zoo("train", "--algo", "ppokl", "--env", "Acrobot-v1", "-n", "256", "-f", str(logs), "--eval-freq", "-1",
        "-params", "n_envs:2", "n_steps:64", "--num-threads", "1")  # fmt: skip

    uploads = []

    class FakeHfApi:
        def create_repo(self, repo_id: str, **kwargs):
            return f"https://huggingface.co/{repo_id}"

        def snapshot_download(self, repo_id: str, local_dir: Path, **kwargs):
            Path(local_dir).mkdir(parents=True, exist_ok=True)

        def upload_folder(self, repo_id: str, folder_path: Path, commit_message: str, **kwargs):
            copy = tmp_path / "uploaded"
            shutil.copytree(folder_path, copy)
            uploads.append((repo_id, copy, commit_message))

    # the zoo runs push_to_hub as a fresh module (runpy), which imports HfApi from huggingface_hub when it starts
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.chdir(tmp_path)
    zoo("push_to_hub", "--algo", "ppokl", "--env", "Acrobot-v1", "-f", str(logs), "-orga", "testorg", "-m", "tiny agent",
        "--no-render")  # fmt: skip

    (repo_id, uploaded, message) = uploads[0]
    assert (repo_id, message) == ("testorg/ppokl-Acrobot-v1", "tiny agent")
    files = {path.name for path in uploaded.iterdir()}
    assert {"ppokl-Acrobot-v1.zip", "config.yml", "args.yml", "env_kwargs.yml", "train_eval_metrics.zip", "README.md"} <= files
    assert "vec_normalize.pkl" in files
    card = (uploaded / "README.md").read_text()
    assert "PPOKL" in card and "pip install sb3-pgext" in card and "python -m sb3_pgext.zoo load_from_hub" in card
    metadata = yaml.safe_load(card.split("---")[1])
    assert {"sb3-pgext", "PPOKL", "stable-baselines3"} <= set(metadata["tags"])
    assert metadata["model-index"][0]["results"][0]["dataset"]["name"] == "Acrobot-v1"

    # The same repo, without vec_normalize.pkl, as a second repo: the optional file may be missing
    cache = tmp_path / "hf_cache"
    lay_out_hub_repo(cache, "testorg/ppokl-Acrobot-v1", uploaded)
    bare = tmp_path / "bare"
    shutil.copytree(uploaded, bare)
    (bare / "vec_normalize.pkl").unlink()
    lay_out_hub_repo(cache, "testorg/ppokl-CartPole-like", bare)

    env = {**ENV, "HF_HUB_CACHE": str(cache), "TRUST_REMOTE_CODE": "True"}
    downloads = tmp_path / "downloads"
    output = run_zoo("load_from_hub", "--algo", "ppokl", "--env", "Acrobot-v1", "-orga", "testorg", "-f", str(downloads), env=env)
    assert "No normalization file" not in output
    run_dir = downloads / "ppokl" / "Acrobot-v1_1"
    assert (run_dir / "Acrobot-v1.zip").is_file() and (run_dir / "Acrobot-v1" / "vecnormalize.pkl").is_file()
    output = run_zoo("enjoy", "--algo", "ppokl", "--env", "Acrobot-v1", "-f", str(downloads), "--no-render", "-n", "600", env=env)
    assert "Episode Reward" in output or "Atari Episode Score" in output or "Mean reward" in output

    # a missing optional file is skipped, not an error (rl_zoo3 caught requests' HTTPError only)
    output = run_zoo("load_from_hub", "--algo", "ppokl", "--env", "Acrobot-v1", "-orga", "testorg", "-name", "ppokl-CartPole-like",
                     "-f", str(downloads), env=env)  # fmt: skip
    assert "No normalization file" in output
    assert (downloads / "ppokl" / "Acrobot-v1_2" / "Acrobot-v1.zip").is_file()


def test_console_script_lists_commands():
    script = Path(sys.executable).parent / "sb3-pgext-zoo"
    if not script.is_file():
        pytest.skip("console script not installed in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0
    for command in ("train", "enjoy", "record_video", "push_to_hub", "load_from_hub", "plot_train", "all_plots"):
        assert command in result.stdout
    result = subprocess.run([str(script), "fly"], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode != 0 and "unknown command 'fly'" in result.stderr
    result = subprocess.run([str(script)], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 2 and "a command is required" in result.stderr and "usage:" in result.stderr


def test_plot_commands(tmp_path, monkeypatch):
    """plot_train, all_plots and plot_from_file (with rliable) on two tiny runs of PPOKL and of SB3's PPO."""
    pytest.importorskip("seaborn")
    pytest.importorskip("rliable")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    for algo in ("ppokl", "ppo"):
        for seed in (1, 2):
            zoo("train", "--algo", algo, "--env", "CartPole-v1", "-n", "1024", "-f", "logs", "--eval-freq", "128",
                "--eval-episodes", "2", "--seed", str(seed), "-params", "n_envs:2", "--num-threads", "1")  # fmt: skip
    zoo("plot_train", "--algo", "ppokl", "--env", "CartPole-v1", "-f", "logs")
    zoo("all_plots", "--algo", "ppokl", "ppo", "--env", "CartPole-v1", "-f", "logs", "-o", "results", "--no-display")
    assert (tmp_path / "results.pkl").is_file()
    zoo("plot_from_file", "-i", "results.pkl", "-o", "from_file.png", "--format", "png", "-r")
    assert (tmp_path / "from_file.png").stat().st_size > 0



def _postgresql_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian's package, or initdb on the PATH), or None."""
    import glob
    import shutil

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for folder in candidates:
        if all((Path(folder) / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


@pytest.fixture
def postgresql_url():
    """A PostgreSQL server of its own, started with initdb / pg_ctl in a temporary folder (skipped where there is none)."""
    import pwd
    import shutil
    import socket
    import tempfile

    pytest.importorskip("psycopg")  # pip install "sb3-pgext[postgresql]"
    pytest.importorskip("sqlalchemy")  # optuna's RDBStorage
    bin_dir = _postgresql_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="sb3_pgext_pg_"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the package's postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(folder, 0o755)
        os.chown(folder, user.pw_uid, user.pw_gid)
    data = folder / "data"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "optuna", "--no-sync"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="optuna", dbname="postgres", autocommit=True) as connection:
            connection.execute("CREATE DATABASE optuna")
        yield f"postgresql+psycopg://optuna@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # starts a PostgreSQL server (30 s); the journal-storage test shares the code path
def test_two_workers_share_one_postgresql_study(tmp_path, postgresql_url):
    """
    The multi-machine tuning of docs/guide/zoo.md: the study created once (as the guide's `optuna create-study` does: two
    workers creating optuna's tables at the same moment collide), then two worker processes share it.
    """
    command = ["optuna", "create-study", "--storage", postgresql_url, "--study-name", "shared", "--direction", "maximize"]
    subprocess.run(command, check=True, capture_output=True, env=ENV)
    tune_with_two_workers(tmp_path, "cvpg", "Pendulum-v1", postgresql_url, postgresql_url)


def test_log_csv_is_a_flag_of_train_only():
    from sb3_pgext.zoo.cli import main

    with pytest.raises(SystemExit, match="--log-csv is a flag of train only, not of enjoy"):
        main(["enjoy", "--algo", "ppokl", "--env", "CartPole-v1", "--log-csv"])


def test_train_gets_the_package_conf_file_for_our_algorithms_only():
    """Without --conf-file, train reads the package's yml for our algorithms (rl_zoo3's supported flag, no patch)."""
    from sb3_pgext.common.hyperparams import hyperparams_path
    from sb3_pgext.zoo.cli import with_package_conf_file

    ppokl = str(hyperparams_path("ppokl"))
    assert with_package_conf_file(["--algo", "ppokl", "--env", "CartPole-v1"])[-2:] == ["--conf-file", ppokl]
    assert with_package_conf_file(["--algo=offpac"])[-1] == str(hyperparams_path("offpac"))
    for flags in (["--algo", "ppo"], [], ["--algo", "cvpg", "-conf", "mine.yml"], ["--algo", "cvpg", "--conf-file=mine.yml"]):
        assert with_package_conf_file(flags) == flags
