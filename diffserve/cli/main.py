"""`diffserve` command line: serve, keys, models (this machine), generate and jobs (a running server, cli/client.py).
Settings come from the environment, then flags."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from diffserve.config import Settings
from diffserve.cli.client import add_client_commands
from diffserve.cli.models import add_models_commands


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:  # Ctrl-C outside a step that handles it (e.g. while a job is being submitted)
        print("diffserve: interrupted", file=sys.stderr)
        return 130


def _settings(args: argparse.Namespace, **extra) -> Settings:
    overrides = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "models_file", None):
        overrides["models_file"] = Path(args.models_file)
    return Settings(**overrides)


def _schema_error(error: Exception) -> int:
    print(f"diffserve: {error}", file=sys.stderr)
    return 2


def _db_upgrade(args: argparse.Namespace) -> int:
    from diffserve.store.db import make_db_engine
    from diffserve.store.schema import upgrade

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    before, after = upgrade(make_db_engine(settings.db_url))
    print(f"database at revision {after}" + (f" (was {before})" if before != after else " (already there)"))
    return 0


def _db_current(args: argparse.Namespace) -> int:
    from diffserve.store.db import make_db_engine
    from diffserve.store.schema import current, head

    revision = current(make_db_engine(_settings(args).db_url))
    print(f"database revision: {revision or 'none'}; this release: {head()}")
    return 0 if revision == head() else 1


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from diffserve.api.app import create_app
    from diffserve.api.logs import LogWriters
    from diffserve.api.slow_clients import protocol_class
    from diffserve.store.db import make_db_engine
    from diffserve.store.schema import SchemaOutOfDate, ensure_schema

    settings = _settings(args, host=args.host, port=args.port, workers=args.workers, gpus=args.gpus,
                         dtype=args.dtype, device=args.device)
    from diffserve.workers.placement import worker_count

    try:
        worker_count(settings)  # --gpus names GPUs that exist
    except ValueError as exc:
        print(f"diffserve serve: {exc}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        ensure_schema(make_db_engine(settings.db_url))
    except SchemaOutOfDate as e:
        return _schema_error(e)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(first_steps(settings, args, has_keys=bool(_key_store(args).list())), flush=True)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.server.host, port=settings.server.port, log_level="info",
                            timeout_graceful_shutdown=5, timeout_keep_alive=settings.server.keep_alive_s,
                            http=protocol_class(settings.server, settings.limits.max_body_bytes))
    writers = LogWriters().start()  # after uvicorn's logging set-up: log lines leave the event loop
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        writers.stop()
    return 0 if server.started else 3  # uvicorn's code for a server that could not start (e.g. the port is taken)


def first_steps(settings: Settings, args: argparse.Namespace, *, has_keys: bool) -> str:
    """What `serve` prints before it starts: where it listens, the playground, and how to get a key."""
    shown_host = "127.0.0.1" if settings.server.host in ("0.0.0.0", "::") else settings.server.host
    url = settings.server.public_url or f"http://{shown_host}:{settings.server.port}"
    data_dir = f" --data-dir {args.data_dir}" if getattr(args, "data_dir", None) else ""
    lines = [f"diffserve: serving {settings.data_dir} on {url}",
             f"  playground:  {url}/ui/   (paste a key in its Key field)",
             f"  API docs:    {url}/docs"]
    key_line = "  a key:       diffserve keys create --name me" + data_dir + "   (prints the key on its last line)"
    lines.append(key_line if has_keys else key_line + "; no key exists yet, so make one first")
    lines.append("  first image: diffserve generate --key <key> --server " + url
                 + " docs/images/demo-input.jpg --prompt sketch -o sketch.png")
    return "\n".join(lines)


def _worker(args: argparse.Namespace) -> int:
    from diffserve.workers.worker import standalone_main

    extra = {"preload_models": args.preload} if args.preload else {}
    settings = _settings(args, **extra)
    return standalone_main(settings, labels=tuple(label.strip().lower() for label in args.label), gpu=args.gpu)


def _key_store(args: argparse.Namespace):
    from diffserve.store.db import make_db_engine
    from diffserve.store.schema import ensure_schema
    from diffserve.store.keys import KeyStore

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = make_db_engine(settings.db_url)
    ensure_schema(db)
    return KeyStore(db)


def _keys_create(args: argparse.Namespace) -> int:
    from diffserve.store.schema import SchemaOutOfDate

    try:
        store = _key_store(args)
    except SchemaOutOfDate as e:
        return _schema_error(e)
    key, full = store.create(args.name, role="admin" if args.admin else "user",
                                        max_queued=args.max_queued)
    print(f"created {key.role} key {key.name!r} (id {key.key_id}); it is shown only once:")
    print(full)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    for k in _key_store(args).list():
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        cap = "default" if k.max_queued is None else (k.max_queued or "none")
        print(f"{k.key_id}  {k.name:<24} {k.role:<6} created {k.created_at:%Y-%m-%d %H:%M}  {state}  max-queued {cap}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    revoked = _key_store(args).revoke(args.key)
    if not revoked:
        print(f"no active key matches {args.key!r}", file=sys.stderr)
        return 1
    for k in revoked:
        print(f"revoked {k.key_id} ({k.name})")
    return 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffserve", description=__doc__)
    sub = p.add_subparsers(dest="command")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="data directory (env DIFFSERVE_DATA_DIR, default ./data)")
    common.add_argument("--models-file", help="models config (default <data-dir>/models.json)")

    serve = sub.add_parser("serve", parents=[common], help="run the HTTP API and its workers")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--device", help="torch device of the workers: cpu, cuda, cuda:1 (env DIFFSERVE_DEVICE)")
    serve.add_argument("--gpus", help="one worker per GPU, pinned to it: 'all' or indices like 0,1 "
                                      "(env DIFFSERVE_GPUS)")
    serve.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"],
                       help="floating-point type of the models (env DIFFSERVE_DTYPE, default auto)")
    serve.set_defaults(func=_serve)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command")
    create = keys.add_parser("create", parents=[common], help="create a key; prints it on the last line")
    create.add_argument("--name")
    create.add_argument("--admin", action="store_true", help="a key that may manage the server")
    create.add_argument("--max-queued", type=_non_negative, metavar="N",
                        help="queued+running jobs this key may have (0: no cap; default: the server's "
                             "DIFFSERVE_LIMITS__MAX_QUEUED_PER_KEY)")
    create.set_defaults(func=_keys_create)
    keys.add_parser("list", parents=[common], help="list keys").set_defaults(func=_keys_list)
    revoke = keys.add_parser("revoke", parents=[common], help="revoke by key, key id or name")
    revoke.add_argument("key")
    revoke.set_defaults(func=_keys_revoke)

    db = sub.add_parser("db", help="the database schema").add_subparsers(dest="db_command")
    db.add_parser("upgrade", parents=[common], help="migrate the store to this release's schema (in place)"
                  ).set_defaults(func=_db_upgrade)
    db.add_parser("current", parents=[common], help="the store's schema revision").set_defaults(func=_db_current)

    worker = sub.add_parser("worker", parents=[common], help="one worker process of its own, beside a server on "
                                                               "the same store (e.g. one per GPU)")
    worker.add_argument("--label", action="append", default=[], help="GPU class it serves (Qolaba inference_type); "
                                                                     "repeatable")
    worker.add_argument("--preload", action="append", metavar="MODEL", help="models to load before taking jobs "
                                                                            "(repeatable; default DIFFSERVE_PRELOAD_MODELS)")
    worker.add_argument("--gpu", type=_non_negative, metavar="N", help="run on cuda:N")
    worker.set_defaults(func=_worker)

    models = sub.add_parser("models", help="the model registry: models, LoRAs, embeddings, VAEs, IP-Adapters")
    add_models_commands(models.add_subparsers(dest="models_command"), common, _settings)
    add_client_commands(sub)
    return p


if __name__ == "__main__":
    sys.exit(main())
