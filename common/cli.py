"""The `voxa` command: one entry point for every Voxa process and the developer tools."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError


def _signaling(args: argparse.Namespace) -> int:
    from voxa.signaling.server import run
    from voxa.signaling.settings import SignalingSettings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    try:
        settings = SignalingSettings(**overrides)
    except ValidationError as exc:
        print(f"voxa signaling: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    run(settings)
    return 0


def _token(args: argparse.Namespace) -> int:
    from voxa.common.claims import VoiceClaims, parse_channel_override, parse_permissions
    from voxa.common.tokens import mint_token

    secret = args.secret or os.environ.get("VOXA_JWT_SECRET")
    if args.private_key:
        with open(args.private_key) as fh:
            key = fh.read()
    elif secret:
        key = secret
    else:
        print("voxa token: pass --secret, --private-key or set VOXA_JWT_SECRET", file=sys.stderr)
        return 2
    try:
        channels = dict(parse_channel_override(c) for c in args.channel)
        claims = VoiceClaims(
            sub=args.user,
            name=args.name or "",
            server=args.server,
            perms=parse_permissions(args.grant),
            channels=channels,
        )
    except (ValueError, ValidationError) as exc:
        print(f"voxa token: {exc}", file=sys.stderr)
        return 2
    print(
        mint_token(
            claims,
            key,
            ttl_s=args.ttl,
            algorithm=args.algorithm,
            issuer=args.issuer,
            audience=args.audience,
            kid=args.kid,
        )
    )
    return 0


def _sfu(args: argparse.Namespace) -> int:
    from voxa.sfu.server import run
    from voxa.sfu.settings import SfuSettings

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "workers": args.workers,
            "server_id": args.server_id,
        }.items()
        if v is not None
    }
    try:
        settings = SfuSettings(**overrides)
    except ValidationError as exc:
        print(f"voxa sfu: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if not settings.secret:
        print("voxa sfu: set VOXA_SFU_SECRET (the bearer secret shared with signaling)", file=sys.stderr)
        return 2
    run(settings)
    return 0


def _operator(args: argparse.Namespace) -> int:
    from voxa.operator.main import run

    return run()


def _crds(args: argparse.Namespace) -> int:
    from voxa.operator.crdgen import main as crdgen

    return crdgen(["--out", args.out, *(["--check"] if args.check else [])])


def _demo(args: argparse.Namespace) -> int:
    from voxa.common.demo import run_demo

    return run_demo(port=args.port, server_id=args.server_id, host=args.host, rtc_ip=args.rtc_ip)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxa", description="Voxa voice infrastructure.")
    sub = parser.add_subparsers(dest="command", required=True)

    sig = sub.add_parser("signaling", help="Run the signaling service (settings from VOXA_* variables).")
    sig.add_argument("--host", default=None, help="Listen address (VOXA_HOST, default 127.0.0.1).")
    sig.add_argument("--port", type=int, default=None, help="Listen port (VOXA_PORT, default 4000).")
    sig.set_defaults(func=_signaling)

    sfu = sub.add_parser("sfu", help="Run the SFU (settings from VOXA_SFU_* variables).")
    sfu.add_argument("--host", default=None, help="Control API address (VOXA_SFU_HOST).")
    sfu.add_argument("--port", type=int, default=None, help="Control API port of worker 0 (VOXA_SFU_PORT).")
    sfu.add_argument("--workers", type=int, default=None, help="Worker processes, 0 = one per core.")
    sfu.add_argument("--server-id", default=None, help="Voice server id (VOXA_SFU_SERVER_ID).")
    sfu.set_defaults(func=_sfu)

    op = sub.add_parser("operator", help="Run the Kubernetes operator (settings from VOXA_OPERATOR_*).")
    op.set_defaults(func=_operator)

    crds = sub.add_parser(
        "crds",
        help="Write (or --check) the CRDs, charts/voxa-operator/operator.yaml and the chart charts/voxa.",
    )
    crds.add_argument("--out", default="crds", help="Directory of the CRD files.")
    crds.add_argument("--check", action="store_true", help="Exit 1 if the files differ from the models.")
    crds.set_defaults(func=_crds)

    tok = sub.add_parser("token", help="Print a signed access token for development and tests.")
    tok.add_argument("--secret", help="HS256 secret (default: VOXA_JWT_SECRET).")
    tok.add_argument("--private-key", help="PEM private key file, for --algorithm RS256/ES256/EdDSA.")
    tok.add_argument("--algorithm", default="HS256", choices=["HS256", "RS256", "ES256", "EdDSA"])
    tok.add_argument("--kid", help="Key id header (for JWKS verification).")
    tok.add_argument("--user", required=True, help="User id (the `sub` claim).")
    tok.add_argument("--name", help="Display name.")
    tok.add_argument("--server", required=True, help="Voice server id.")
    tok.add_argument("--grant", default="connect,speak", help="Comma list of permissions, or `all`.")
    tok.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="CHANNEL:perm,-perm",
        help="Per-channel override: plain names allow, `-name` denies. Repeatable.",
    )
    tok.add_argument("--ttl", type=int, default=3600, help="Lifetime in seconds.")
    tok.add_argument("--issuer", help="`iss` claim.")
    tok.add_argument("--audience", help="`aud` claim.")
    tok.set_defaults(func=_token)

    demo = sub.add_parser("demo", help="Run a self-contained local demo with embedded defaults.")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=4000)
    demo.add_argument("--server-id", default="demo")
    demo.add_argument("--rtc-ip", default=None, help="Address the SFU uses for media (default: --host).")
    demo.set_defaults(func=_demo)

    from voxa.client.cli import add_parser as add_client_parser

    add_client_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
