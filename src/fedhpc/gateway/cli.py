"""Arguments of ``fedhpc worker``, kept apart from the worker so that building the
command line does not import PyTorch (every ``fedhpc`` command would pay for it)."""

from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", required=True, metavar="HOST:PORT", help="the gateway's address")
    p.add_argument("--token-file", required=True, help="file holding this worker's token")
    p.add_argument("--ca", help="CA certificate (PEM) to verify the gateway; without it the link is NOT encrypted")
    p.add_argument("--cert", help="this worker's certificate (PEM), for mutual TLS")
    p.add_argument("--key", help="this worker's private key (PEM), for mutual TLS")
    p.add_argument("--name", default=os.uname().nodename, help="worker name in the gateway's logs")
    p.add_argument("--client-id", type=int, default=-1, help="remote client slot to take (default: any free)")
    p.add_argument("--data", default="digits", help="dataset name this worker trains on (see fedhpc data)")
    p.add_argument("--data-root", default="", help="directory of the dataset files")
    p.add_argument("--tokenizer", default="", help="--data text: the tokenizer's directory (the job's hf: model's)")
    p.add_argument("--block", type=int, default=64, help="--data text: tokens per sample (the job's data.block)")
    p.add_argument("--shard", default="0/1", metavar="K/N", help="train on iid shard K of N of the dataset")
    p.add_argument("--retry-s", type=float, default=120.0, help="give up after this long without the gateway")
