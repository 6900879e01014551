#!/usr/bin/env python3
"""Summarises a Go CPU profile (pprof protobuf, as nats-server's `--profile PORT` serves at
/debug/pprof/profile?seconds=N) without Go's toolchain.

    scripts/pprof-top.py PROFILE [N] [--group SUBSTRING=LABEL ...]

Prints the N functions with the most samples on the stack (cumulative) and where they are the
leaf (flat), as shares of all samples. Each --group labels the samples with a function whose name
contains SUBSTRING anywhere on their stack; a sample goes to the first such group in the order
given (so list the specific ones first: jsMsgGetRequest=STREAM.MSG.GET before readLoop=read), and
the groups' shares are printed at the end.
"""
import gzip
import sys
from collections import defaultdict


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def fields(buf):
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 2:
            length, i = varint(buf, i)
            value = buf[i : i + length]
            i += length
        elif wire == 1:
            value = int.from_bytes(buf[i : i + 8], "little")
            i += 8
        elif wire == 5:
            value = int.from_bytes(buf[i : i + 4], "little")
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, value


def packed(value, wire):
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = varint(value, i)
        out.append(v)
    return out


def main():
    args = sys.argv[1:]
    path = args.pop(0)
    top = int(args.pop(0)) if args and not args[0].startswith("--") else 40
    groups = []
    while args:
        flag = args.pop(0)
        if flag == "--group":
            sub, label = args.pop(0).split("=", 1)
            groups.append((sub, label))
    data = open(path, "rb").read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    strings, samples, locations, functions = [], [], {}, {}
    for number, wire, value in fields(data):
        if number == 6:
            strings.append(value.decode(errors="replace"))
        elif number == 2:
            locs, vals = [], []
            for n, w, v in fields(value):
                if n == 1:
                    locs += packed(v, w)
                elif n == 2:
                    vals += packed(v, w)
            samples.append((locs, vals))
        elif number == 4:
            lid, lines = None, []
            for n, w, v in fields(value):
                if n == 1:
                    lid = v
                elif n == 4:
                    fid = next((vv for nn, ww, vv in fields(v) if nn == 1), None)
                    lines.append(fid)
            locations[lid] = lines
        elif number == 5:
            fid = name = None
            for n, w, v in fields(value):
                if n == 1:
                    fid = v
                elif n == 2:
                    name = v
            functions[fid] = name
    name = lambda fid: strings[functions[fid]] if fid in functions else "?"
    flat, cum, grouped = defaultdict(int), defaultdict(int), defaultdict(int)
    total = 0
    for locs, vals in samples:
        weight = vals[0] if vals else 1
        total += weight
        stack = []  # leaf first
        for lid in locs:
            # Inlined functions: a location's lines are innermost first.
            stack += [name(fid) for fid in locations.get(lid, [])]
        if stack:
            flat[stack[0]] += weight
        for fn in set(stack):
            cum[fn] += weight
        label = next((lab for sub, lab in groups if any(sub in fn for fn in stack)), "other")
        grouped[label] += weight
    print(f"{total} samples")
    print("  cum%   flat%  function")
    for fn, c in sorted(cum.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * c / total:6.1f} {100 * flat[fn] / total:6.1f}  {fn}")
    if groups:
        print("groups (first match from the root):")
        for label, c in sorted(grouped.items(), key=lambda kv: -kv[1]):
            print(f"{100 * c / total:6.1f}  {label}")


if __name__ == "__main__":
    main()
