"""Record a policy's rollout as frames / an MP4, and show it inline in a notebook.

>>> frames, ret = record_rollout("dmc/cartpole-swingup", policy, seed=0, path="swingup.mp4")
>>> show_video(frames)          # or show_video("swingup.mp4")
"""

from __future__ import annotations

import os

# Offscreen rendering on a headless machine; must be set before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Callable  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:  # IPython is only needed in notebooks
    from IPython.display import Video

DEFAULT_FPS = 30
DEFAULT_MAX_STEPS = 500  # 500 frames of 240x320 is ~1-2 MB of MP4: fine inside a notebook

Policy = Callable[[np.ndarray], np.ndarray]


def record_rollout(
    env_id_or_env: str | gym.Env,
    policy: Policy,
    seed: int = 0,
    max_steps: int = DEFAULT_MAX_STEPS,
    path: str | os.PathLike | None = None,
    fps: int = DEFAULT_FPS,
) -> tuple[np.ndarray, float]:
    """Run one episode of ``policy`` and return ``(frames[T, H, W, 3] uint8, episode_return)``.

    ``policy(obs) -> action`` gets the flat float32 observation and returns an action in
    [-1, 1]. An env id is built with ``render_mode="rgb_array"`` (and closed afterwards); a
    given env must have been made with that render mode. ``frames`` holds the first frame
    and one per step, so ``T = steps + 1``. With ``path``, an MP4 is written there too.
    """
    env, owned = _rgb_env(env_id_or_env)
    try:
        obs, _ = env.reset(seed=seed)
        frames = [_frame(env)]
        episode_return = 0.0
        for _ in range(max_steps):
            action = np.asarray(policy(obs))
            obs, reward, terminated, truncated, _ = env.step(action)
            episode_return += float(reward)
            frames.append(_frame(env))
            if terminated or truncated:
                break
    finally:
        if owned:
            env.close()
    video = np.stack(frames)
    if path is not None:
        save_mp4(video, path, fps=fps)
    return video, episode_return


def save_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = DEFAULT_FPS) -> Path:
    """Write ``frames[T, H, W, 3]`` as an H.264 MP4, atomically (temp file, then rename)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder so os.replace is a rename; a crash leaves no half-written video at `path`.
    fd, tmp = tempfile.mkstemp(suffix=".mp4", prefix=f".{path.stem}-", dir=path.parent)
    os.close(fd)
    try:
        imageio.mimwrite(tmp, list(frames), fps=fps, format="FFMPEG", codec="libx264")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def show_video(
    frames_or_path: np.ndarray | str | os.PathLike, fps: int = DEFAULT_FPS, width: int | None = None
) -> Video:
    """An ``IPython.display.Video`` that embeds the MP4 in the notebook (survives saving).

    Frames are encoded to a temporary MP4 first; a path is embedded as it is.
    """
    from IPython.display import Video

    if isinstance(frames_or_path, (str, os.PathLike)):
        return Video(str(frames_or_path), embed=True, width=width, html_attributes="controls loop")
    with tempfile.TemporaryDirectory() as folder:
        data = save_mp4(np.asarray(frames_or_path), Path(folder) / "rollout.mp4", fps=fps).read_bytes()
    return Video(data, embed=True, mimetype="video/mp4", width=width, html_attributes="controls loop")


def _rgb_env(env_id_or_env: str | gym.Env) -> tuple[gym.Env, bool]:
    """The env to film and whether this module built it (and so must close it)."""
    if isinstance(env_id_or_env, str):
        from .envs import make

        return make(env_id_or_env, render_mode="rgb_array"), True
    if env_id_or_env.render_mode != "rgb_array":
        raise ValueError(
            f"record_rollout needs an env made with render_mode='rgb_array', "
            f"got render_mode={env_id_or_env.render_mode!r}"
        )
    return env_id_or_env, False


def _frame(env: gym.Env) -> np.ndarray:
    frame = env.render()
    return np.asarray(frame, dtype=np.uint8)


__all__ = ["record_rollout", "save_mp4", "show_video"]
