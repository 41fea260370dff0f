"""`vasa-engine serve --ray`: a real Ray cluster on this machine (CPU), the service deployed on it by the command
itself (`--address` joins the cluster this module starts), 2 engine replicas of the tiny weights with one live
session each, driven by the service's own clients: sessions spread over the replicas, the third refused with 1013,
controls and interrupts as in one process, a replica killed mid-stream (its session closed with 1011 naming it,
the other session complete), Serve replacing it and new sessions landing there. One cluster for the module
(20-40 s to start on 2 cores); the checks that need no cluster come last."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("ray.serve", reason="the `ray` extra (pip install 'vasa-engine[ray]') is not installed")

from conftest import REPO  # noqa: E402
from vasa_engine.cli import main  # noqa: E402
from vasa_engine.client import ServiceClient, SessionClosed  # noqa: E402
from vasa_engine.service.load import speech_like  # noqa: E402
from vasa_engine.service.protocol import ServiceFull  # noqa: E402
from vasa_engine.service.scaleout import APP_NAME  # noqa: E402
from vasa_engine.service.scaleout.remote import Reservation  # noqa: E402

pytestmark = pytest.mark.slow

FAST = {"chunk_ms": 120, "lookahead_ms": 40}
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro, timeout=240):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Output:
    """A subprocess's stderr, read on a thread (so the pipe never fills), kept for messages."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self.thread.start()

    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def cluster():
    import ray

    from vasa_engine.service.scaleout.launch import PROXY_READY_ENV, PROXY_READY_S

    given = os.environ.get(PROXY_READY_ENV)
    os.environ[PROXY_READY_ENV] = given or PROXY_READY_S  # the cluster's processes inherit it
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if given is None:
        del os.environ[PROXY_READY_ENV]


@pytest.fixture(scope="module")
def service(cluster, tiny_full_weights, tmp_path_factory):
    """`vasa-engine serve --ray` joining the module's cluster: 2 replicas, 1 session each."""
    port = free_port()
    cmd = [sys.executable, "-m", "vasa_engine.cli", "serve", "--ray", "--address", cluster, "--replicas", "2",
           "--max-sessions", "1", "--device", "cpu", "--weights", str(tiny_full_weights), "--port", str(port),
           "--avatars", str(tmp_path_factory.mktemp("avatars")), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    err = Output(proc.stderr)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "serving on" not in err.text():
        assert proc.poll() is None and time.monotonic() < deadline, err.text()[-3000:]
        time.sleep(0.2)
    yield ServiceClient(f"http://127.0.0.1:{port}")
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the application is removed from the cluster, exit 0
    proc.wait(120)
    err.thread.join(10)
    assert proc.returncode == 0, err.text()[-3000:]
    assert err.text().rstrip().endswith("stopped")
    from ray import serve

    assert APP_NAME not in serve.status().applications


@pytest.fixture(scope="module")
def avatar_id(service, sample_image) -> str:
    return service.upload_avatar(sample_image)["id"]


async def stream(client, avatar, seconds, seed, *, opened=None, go=None, on_frame=None):
    """One session: `ready` (set in `opened`), wait for `go`, then `seconds` of speech in real time and `end`;
    -> (replica, speech frame numbers, the done report)."""
    pcm = speech_like(seconds, seed)
    async with client.session(avatar, settings=FAST) as session:
        if opened is not None:
            opened.set_result(session.ready["replica"])
        if go is not None:
            await go

        async def feed():
            step = 1600
            start = time.perf_counter()
            for i, a in enumerate(range(0, pcm.size, step)):
                await asyncio.sleep(max(0.0, start + i * 0.1 - time.perf_counter()))
                await session.send_audio(pcm[a : a + step])
            await session.end()

        feeder = asyncio.create_task(feed())
        speech = []
        try:
            async for frame in session.frames():
                if frame.kind == "speech":
                    speech.append(frame.header["frame"])
                    if on_frame is not None:
                        on_frame(session.ready["replica"], len(speech))
        finally:
            feeder.cancel()
        return session.ready["replica"], speech, session.report


async def refused_code(client, avatar) -> tuple[int, str]:
    """Open a session that must be refused: -> the close code and reason."""
    from websockets.asyncio.client import connect

    async with connect("ws" + client.url[4:] + "/v1/sessions") as ws:
        try:
            await ws.send(json.dumps({"type": "start", "avatar": avatar, "settings": FAST}))
            while True:
                message = await asyncio.wait_for(ws.recv(), 60)
                assert not (isinstance(message, str) and json.loads(message)["type"] == "ready"), message
        except Exception:  # noqa: BLE001 - the close is what is checked
            pass
        return ws.close_code, ws.close_reason


def complete(speech, report, seconds) -> bool:
    expected = round(seconds * 25)
    return speech == list(range(expected)) and report["dropped"] == 0 and report["lost_audio_ms"] == 0


def engine_handle():
    from ray import serve

    return serve.get_deployment_handle("Engine", APP_NAME).options(method_name="session", stream=True)


def engine_replicas() -> int:
    from ray import serve

    return serve.status().applications[APP_NAME].deployments["Engine"].replica_states.get("RUNNING", 0)


def test_sessions_spread_over_replicas_and_a_third_is_refused(service, avatar_id, sample_image):
    health = service.health()
    assert health["status"] == "ok" and health["max_sessions"] == 2  # 2 replicas x 1 session
    again = service.upload_avatar(sample_image)  # the store is shared: found, not prepared again
    assert again["id"] == avatar_id and [a["id"] for a in service.avatars()] == [avatar_id]

    async def go():
        handle = engine_handle()
        async with Reservation(handle, 60.0, "no room") as selection:  # the control: a free slot is found
            assert selection.replica_id
        loop = asyncio.get_running_loop()
        opened = [loop.create_future(), loop.create_future()]
        release = loop.create_future()
        sessions = [asyncio.create_task(stream(service, avatar_id, 0.6, seed, opened=opened[seed], go=release))
                    for seed in range(2)]
        replicas = await asyncio.gather(*opened)
        refusal = await refused_code(service, avatar_id)
        with pytest.raises(ServiceFull, match="every replica is full"):  # Serve's own bound: 1 session a replica
            async with Reservation(handle, 1.0, "every replica is full"):
                pass
        release.set_result(None)
        return replicas, refusal, await asyncio.gather(*sessions)

    replicas, (code, reason), results = run(go())
    assert len(set(replicas)) == 2 and all(r.startswith("Engine#") for r in replicas)
    assert code == 1013 and "full" in reason
    for replica, speech, report in results:
        assert complete(speech, report, 0.6), (replica, speech, report)


def test_controls_interrupt_and_errors_through_the_ingress(service, avatar_id):
    async def go():
        async with service.session(avatar_id, settings=FAST) as session:
            await session.controls(head_yaw=400)
            await session.controls(head_yaw=10.0, smoothing=0.5)
            await session.send_audio(speech_like(0.8, 3))
            await session.interrupt()
            await session.send_audio(speech_like(0.4, 4))
            await session.end()
            frames = [frame.header async for frame in session.frames()]  # until done, closed with 1000
            return session.errors, frames, session.report

    errors, frames, report = run(go())
    assert errors == ["head yaw must lie in [-45, 45] degrees, got 400"]
    speech = [f for f in frames if f["kind"] == "speech"]
    last = max(f["utterance"] for f in speech)
    assert sum(f["utterance"] == last for f in speech) == 10  # the 0.4 s after the barge-in, complete
    assert all(f["utterance"] < last for f in speech[:-10])
    assert report["interrupts"] == 1


def test_a_replica_killed_mid_stream(service, avatar_id):
    import ray

    killed = {}

    def kill_first_at_ten_frames(replica, frames):
        if frames == 10 and not killed:
            killed["replica"] = replica
            app, deployment, tag = APP_NAME, *replica.split("#")
            ray.kill(ray.get_actor(f"SERVE_REPLICA::{app}#{deployment}#{tag}", namespace="serve"), no_restart=True)

    async def go():
        first = asyncio.create_task(stream(service, avatar_id, 1.2, 7, on_frame=kill_first_at_ten_frames))
        await asyncio.sleep(0.3)
        second = asyncio.create_task(stream(service, avatar_id, 1.2, 8))
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = run(go())
    assert isinstance(first, SessionClosed), first
    assert first.code == 1011 and f"replica {killed['replica']} is gone" in first.reason, first.reason
    replica, speech, report = second
    assert replica != killed["replica"]
    assert complete(speech, report, 1.2), (speech, report)  # every frame, no gap, while the other replica died

    deadline = time.monotonic() + 120  # Serve starts a replica in its place
    while engine_replicas() < 2:
        assert time.monotonic() < deadline, "the killed replica was not replaced"
        time.sleep(0.5)

    async def two():
        return await asyncio.gather(*(stream(service, avatar_id, 0.4, seed) for seed in (11, 12)))

    results = run(two())
    replicas = {r for r, _, _ in results}
    assert len(replicas) == 2 and killed["replica"] not in replicas and replica in replicas
    for _, speech, report in results:
        assert complete(speech, report, 0.4), (speech, report)


# ---------------------------------------------------------------------------------------------- no cluster


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "2"], "--replicas only apply with --ray"),
    (["--ray", "--replicas", "2", "--min-replicas", "1", "--max-replicas", "3"], "not both"),
    (["--ray", "--min-replicas", "3", "--max-replicas", "2"], "min replicas (3) is above max replicas (2)"),
    (["--ray", "--max-replicas", "2"], "needs both --min-replicas and --max-replicas"),
    (["--ray", "--device", "cuda:1"], "each replica is given its own GPU"),
    (["--ray", "--port", "0"], "--port 0 is not supported with --ray"),
    (["--ray", "--host", "0.0.0.0"], "needs --token"),
])
def test_bad_ray_options_refused_before_ray_starts(argv, message, capsys, tmp_path):
    assert main(["serve", "--avatars", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_serve_without_ray_imports_nothing_from_ray():
    code = ("import sys\n"
            "from vasa_engine.cli import build_parser\n"
            "build_parser().parse_args(['serve'])\n"
            "import vasa_engine.service.app, vasa_engine.service.server, vasa_engine.commands.serve\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_ray_options_layout():
    from vasa_engine.service.scaleout.options import RayOptions

    auto = RayOptions(min_replicas=1, max_replicas=4, max_sessions=8, replicas_per_gpu=2).check()
    gpu = auto.engine_deployment(use_gpus=True)
    assert gpu["max_ongoing_requests"] == 8 and gpu["ray_actor_options"] == {"num_gpus": 0.5}
    assert gpu["autoscaling_config"]["target_ongoing_requests"] == pytest.approx(6.0)
    assert auto.capacity == 32 and "num_replicas" not in gpu
    fixed = RayOptions(replicas=3, max_sessions=2, cpus_per_replica=2.0).check()
    cpu = fixed.engine_deployment(use_gpus=False)
    assert cpu["num_replicas"] == 3 and cpu["ray_actor_options"] == {"num_cpus": 2.0} and fixed.capacity == 6
    assert fixed.engine_kwargs(use_gpus=True)["device"] == "cuda"
    assert fixed.engine_kwargs(use_gpus=False)["device"] == "cpu"


def test_app_builder_arguments(tmp_path, tiny_full_weights):
    from ray.serve import Application

    from vasa_engine.errors import InputError
    from vasa_engine.service.scaleout.deployments import app_builder

    args = {"replicas": 2, "max_sessions": 3, "use_gpus": False, "avatars": str(tmp_path),
            "engine": {"weights": [str(tiny_full_weights)], "device": "cpu"}}
    assert isinstance(app_builder(args), Application)
    with pytest.raises(InputError, match="unknown application argument.*: sessions"):
        app_builder({**args, "sessions": 3})
    with pytest.raises(InputError, match="needs --token"):
        app_builder({**args, "host": "0.0.0.0"})


def test_store_shared_by_processes_keeps_the_first_complete_avatar(avatar, tmp_path, monkeypatch):
    """Two replicas preparing the same portrait at once: the second finds the folder there when it renames its
    own; it drops its copy and the avatar stays whole."""
    from pathlib import Path

    from vasa_engine.service.avatar_store import AvatarStore

    store = AvatarStore(tmp_path, None)
    meta = {"id": "0123456789abcdef", "width": 512, "height": 512, "aligned": False, "method": "center",
            "warnings": [], "created": 0.0, "portrait": "portrait.png", "engine": "f" * 16}
    store._write(meta["id"], b"first", avatar, meta)
    folder = tmp_path / meta["id"]
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda p: False if p == folder else real_exists(p))  # lost the race
    store._write(meta["id"], b"second", avatar, meta)
    monkeypatch.undo()
    assert (folder / "portrait.png").read_bytes() == b"first" and store.info(meta["id"])["id"] == meta["id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [meta["id"]]  # no build folder left behind


def test_kuberay_manifest_builds_the_application(monkeypatch):
    """deploy/kuberay/rayservice.yaml: its Serve config passes Serve's own schema and its arguments build the app."""
    import yaml
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from vasa_engine.service.scaleout.deployments import app_builder

    documents = list(yaml.safe_load_all((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text()))
    service = next(d for d in documents if d["kind"] == "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (application,) = ServeDeploySchema.model_validate(serve_config).applications
    assert application.import_path == "vasa_engine.service.scaleout.deployments:app_builder"
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == __import__("ray").__version__
    monkeypatch.setenv("VASA_ENGINE_TOKEN", "t0ken")
    assert isinstance(app_builder(application.args), Application)
