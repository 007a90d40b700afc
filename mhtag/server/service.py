"""What the app holds between requests: settings, the encoder and predictor (loaded once), thumbnails."""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from mhtag.core.errors import BusyError, MhtagError
from mhtag.core.storage import location, stamp
from mhtag.index.guard import index_errors
from mhtag.index.meta import meta_path, require_meta
from mhtag.index.neighbours import labelled_index
from mhtag.index.predict import Predictor
from mhtag.index.search import warm
from mhtag.index.store import DEFAULT_DB
from mhtag.results import RetrainStatus
from mhtag.server.batching import MicroBatcher

_logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOOPBACK_HOST_HEADERS = ["127.0.0.1", "localhost", "[::1]", "::1"]


@dataclass
class Settings:
    db: str | Path = DEFAULT_DB  # a folder, or an object-store URI
    model: Path | None = None  # default: the index's own model
    api_key_file: Path | None = None  # without one, writes are refused
    private: bool = False  # reads need the API key too (`--private`)
    host: str = "127.0.0.1"  # the address served; on a loopback one, requests must name a loopback Host
    max_upload_bytes: int = 20 * 1024 * 1024
    max_files: int = 32  # images in one request
    max_request_pixels: int = 64_000_000  # decoded pixels one request may ask for, all its images together
    model_threads: int = 2  # concurrent decodes and answers (off the event loop)
    max_batch: int = 32  # images of concurrent requests that share one forward pass
    threads: int | None = None  # torch/FAISS threads of a worker process (`mhtag --threads`); None: every core

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")

    ENV = "MHTAG_SERVE_SETTINGS"  # how `mhtag serve --workers N` hands the settings to uvicorn's worker processes

    def to_env(self) -> dict[str, str]:
        fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        return {self.ENV: json.dumps(fields)}

    @classmethod
    def from_env(cls) -> Settings:
        fields = json.loads(os.environ[cls.ENV])
        for name in ("model", "api_key_file"):
            fields[name] = None if fields[name] is None else Path(fields[name])
        fields["db"] = location(fields["db"])
        return cls(**fields)


class RetrainJob:
    """Retraining from the catalogue, one at a time, in a background thread: searches keep answering from the old
    model and predictions until `retrain` switches the index to the new ones."""

    def __init__(self, db):
        self.db = db
        self.status = RetrainStatus()
        self._lock = threading.Lock()

    def start(self) -> RetrainStatus:
        with self._lock:
            if self.status.state == "running":
                raise BusyError(f"a retraining started at {self.status.started} is running; wait for it")
            self.status = RetrainStatus(state="running", phase="starting", started=_now())
        threading.Thread(target=self._run, name="mhtag-retrain", daemon=True).start()
        return self.status

    def _run(self) -> None:
        from mhtag.catalogue.retrain import retrain

        def phase(name: str) -> None:
            self.status = self.status.model_copy(update={"phase": name})

        try:
            report = retrain(self.db, phase=phase)
            self.status = self.status.model_copy(update={"state": "done", "phase": "", "finished": _now(),
                                                         "report": report})
        except MhtagError as exc:
            self.status = self.status.model_copy(update={"state": "failed", "finished": _now(), "error": str(exc)})
        except Exception:  # a bug: logged with its traceback; the service goes on with the model it has
            _logger.exception("retraining %s failed", self.db)
            self.status = self.status.model_copy(update={"state": "failed", "finished": _now(),
                                                         "error": "internal error (logged on the server)"})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Service:
    """Loads the encoder and the index snapshot once; a write from anywhere (CLI or API) makes a new table
    version, which the next request sees (the predictor is rebuilt, reusing the encoder, when meta changes)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = location(settings.db)
        self.api_key = check_settings(settings)
        self.model_limiter = None  # an anyio.CapacityLimiter, made on first use inside the event loop
        self.batchers: dict[str, MicroBatcher] = {}  # the model's micro-batchers (embed, predict)
        self.retraining = RetrainJob(self.db)
        with index_errors(self.db):
            self._predictor = Predictor(self.db, settings.model)
            self._meta_stamp = self._stamp()
            warm(self.db)  # the first request is not slow
            labelled_index(self.db)

    def _stamp(self) -> tuple[int, int, int] | None:
        return stamp(meta_path(self.db))

    @property
    def predictor(self) -> Predictor:
        """The predictor of the index's current meta; its model is kept only while the index still names it (a
        retraining from the catalogue switches the index to new heads)."""
        now = self._stamp()
        if now != self._meta_stamp:
            old = self._predictor._encoder
            meta = require_meta(self.db)
            same = old is not None and (self.settings.model is not None or old.model_path == meta.model_path)
            self._predictor = Predictor(self.db, self.settings.model, encoder=old if same else None)
            self._meta_stamp = now
        return self._predictor

    def _embed_batch(self, images: list) -> list:
        """One embedding per decoded image, in one forward pass (a batcher's `run`)."""
        feats, _ = self.predictor.encoder.encode_images(images)
        return list(feats)

    def _predict_batch(self, items: list[tuple]) -> list:
        """One prediction per (decoded image, name): one forward pass and one neighbour search for them all."""
        predictor = self.predictor
        images, names = [i for i, _ in items], [n for _, n in items]
        feats, probs = predictor.encoder.encode_images(images)
        return predictor.answer(feats, probs, names, [None] * len(items))

    async def embed(self, images: list):
        """Embeddings of decoded images, batched with other requests' images."""
        import numpy as np

        return np.stack(await self._batcher("embed", self._embed_batch)(images))

    async def predict(self, images: list, names: list[str]) -> list:
        """Predictions for decoded images, batched with other requests' images."""
        return await self._batcher("predict", self._predict_batch)(list(zip(images, names, strict=True)))

    def _batcher(self, name: str, run) -> MicroBatcher:
        if name not in self.batchers:  # made on first use: its queue belongs to the running event loop
            self.batchers[name] = MicroBatcher(run, self.settings.max_batch)
        return self.batchers[name]

    def key_ok(self, presented: str | None) -> bool:
        return self.api_key is not None and presented is not None and hmac.compare_digest(presented, self.api_key)


def check_settings(settings: Settings) -> str | None:
    """What can be wrong before serving, as one clear error: no index at `db`, a bad key file, `private` without
    a key. The API key."""
    require_meta(settings.db)
    if settings.private and settings.api_key_file is None:
        raise MhtagError("--private needs --api-key-file: reads then need the key that file holds")
    return _read_key(settings.api_key_file)


def _read_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise MhtagError(f"api key file {path}: {exc.strerror}") from exc
    if len(key) < 16:
        raise MhtagError(f"api key file {path}: the key must be at least 16 characters")
    return key


def parse_json_field(text: str | None, what: str):
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MhtagError(f"{what} is not valid JSON ({exc.msg} at character {exc.pos})") from exc
