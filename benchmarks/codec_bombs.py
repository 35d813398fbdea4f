"""Time and memory of decoding inflating payloads (a few bytes that declare gigabytes).

Usage: python benchmarks/codec_bombs.py            # this checkout's codec
       PYTHONPATH=OLD_CHECKOUT python benchmarks/codec_bombs.py   # another checkout's (e.g. a git worktree)

Each case is decoded in a fresh subprocess, so its peak resident memory (ru_maxrss) is its own. Prints one
line per case: payload bytes, outcome (the error's first words, or the decoded size), seconds, the traced
peak allocation (tracemalloc: numpy's allocations) and the process's peak RSS above its baseline. With a
codec that takes expectations (``protos.codec.Expected``) each case is also decoded as a receiver that
states what it asked for (4,000 signs per tensor, say).
"""

from __future__ import annotations

import json
import subprocess
import sys

CASES = {
    "sign-bomb-4x2^28": "four SIGN tensors of 2^28 entries, constant CODED_BITS streams",
    "sign-bomb-1x2^28": "one SIGN tensor of 2^28 entries, a constant CODED_BITS stream (the end-to-end reply)",
    "float-bomb-2^28": "one FLOAT32 tensor of 2^28 entries as INDEX_VALUES with no entries",
}

PROBE = "from fedprune.protos import codec; print(hasattr(codec, 'Expected'))"
_CHILD = r"""
import hashlib, json, resource, sys, time, tracemalloc
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos import codec

case, with_expect = sys.argv[1], sys.argv[2] == "1"
E = pb.Encoding
if case == "float-bomb-2^28":
    tensors = [pb.Tensor(name="s0", dtype=pb.FLOAT32, encoding=E.INDEX_VALUES, shape=[2**28], count=0)]
else:
    n = 4 if case.startswith("sign-bomb-4") else 1
    tensors = [pb.Tensor(name=f"s{i}", dtype=pb.SIGN, encoding=E.CODED_BITS, shape=[2**28], count=2**28,
                         model_q=65535) for i in range(n)]
body = pb.Payload(tensors=tensors).SerializeToString()
blob = pb.Envelope(format_version=1, body=body, digest=hashlib.blake2b(body, digest_size=16).digest()
                   ).SerializeToString()
kwargs = {}
if with_expect:
    dtype = "float32" if case.startswith("float") else "sign"
    kwargs["expect"] = codec.Expected({t.name: codec.TensorSpec(dtype, (4000,)) for t in tensors})
codec.decode(codec.encode({"warm": __import__("numpy").ones(8, "int8")}))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
start = time.perf_counter()
try:
    decoded = codec.decode(blob, **kwargs)
    outcome = "decoded %d MiB" % (sum(a.nbytes for a in decoded.tensors.values()) >> 20)
except Exception as exc:
    outcome = f"{type(exc).__name__}: {str(exc)[:70]}"
seconds = time.perf_counter() - start
traced = tracemalloc.get_traced_memory()[1]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(json.dumps({"bytes": len(blob), "outcome": outcome, "seconds": seconds, "traced_mib": traced / 2**20,
                  "rss_mib": rss / 1024}))
"""


def main() -> int:
    probe = subprocess.run([sys.executable, "-c", PROBE],
                           capture_output=True, text=True, check=True)
    modes = [False, True] if probe.stdout.strip() == "True" else [False]
    for case, what in CASES.items():
        for with_expect in modes:
            done = subprocess.run([sys.executable, "-c", _CHILD, case, "1" if with_expect else "0"],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode:
                print(f"{case}: child failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{case:<18} expect={'yes' if with_expect else 'no ':<3} bytes={r['bytes']:>4} "
                  f"seconds={r['seconds']:.4f} traced_peak_mib={r['traced_mib']:8.2f} "
                  f"rss_above_baseline_mib={r['rss_mib']:8.1f} -> {r['outcome']}   ({what})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
