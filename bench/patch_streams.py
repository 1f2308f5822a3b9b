#!/usr/bin/env python3
"""Where the bytes of an ELF patch go: deltaroot's ELF payload and Zucchini's patch, stream by
stream, each stream's raw size and its size compressed alone by zstd -19 (the sum is close to,
not equal to, the patch: the patch compresses its streams together).

    patch_streams.py deltaroot DELTA     # a container of method 4 (`deltaroot diff --method elf`)
    patch_streams.py zucchini RAWPATCH   # Zucchini's patch before zstd (`zucchini-gen`)
    patch_streams.py deltaroot DELTA --dump DIR   # and each stream's raw bytes to DIR/<stream>

Needs the `zstandard` module (pip install zstandard). deltaroot's streams (docs/FORMAT.md
§6.4): the records (mix, copy, seek), the diff bytes over the mixed ranges (from revision 5
the gaps and values of the nonzero ones), the extra bytes, and the corrections of references
the map mispredicts. Zucchini's (its patch_writer.cc):
equivalences (source skip, destination skip, length), extra data, raw deltas (skip, byte),
reference deltas and extra targets."""
import io
import lzma
import os
import struct
import sys

import zstandard

HEADER_LEN = 81  # the delta container's header (FORMAT.md §6.1)
zc = zstandard.ZstdCompressor(level=19)


def packed(b):
    return len(zc.compress(bytes(b))) if b else 0


def varints(buf, pos, n):
    """n LEB128 varints from buf at pos: (values, next position)."""
    out = []
    for _ in range(n):
        v = shift = 0
        while True:
            byte = buf[pos]
            pos += 1
            v |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        out.append(v)
    return out, pos


def deltaroot(path):
    data = open(path, "rb").read()
    if data[HEADER_LEN:].startswith(b"\xfd7zXZ\x00"):  # framed as xz (FORMAT.md §6.2)
        raw = lzma.decompress(data[HEADER_LEN:], format=lzma.FORMAT_XZ)
    else:
        reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(
            io.BytesIO(data[HEADER_LEN:]), read_across_frames=True)
        raw = reader.read()
    arch, pos = raw[0], 1
    if arch & 0x80:  # BTF shift tables: two tables of (count, pairs)
        for _ in range(2):
            (count,), pos = varints(raw, pos, 1)
            _, pos = varints(raw, pos, 2 * count)
    start = pos
    (n,), pos = varints(raw, pos, 1)
    sparse = arch & 0x08  # revision 5: records by column, sparse diff bytes
    records, pos = varints(raw, pos, 3 * n - (1 if sparse and n else 0))
    streams = {"records": (raw[start:pos], f"{n:,} records")}
    (dl,), pos = varints(raw, pos, 1)
    if sparse:
        (m,), pos = varints(raw, pos, 1)
        gaps, values = bytearray(), bytearray()
        for block in range(0, m, 1 << 16):
            count = min(1 << 16, m - block)
            start = pos
            _, pos = varints(raw, pos, count)
            gaps += raw[start:pos]
            values += raw[pos:pos + count]
            pos += count
        streams["diff gaps"] = (gaps, f"{m:,} nonzero of {dl:,}")
        streams["diff values"] = (values, "")
    else:
        diff = raw[pos:pos + dl]
        pos += dl
        streams["diff"] = (diff, f"{sum(1 for x in diff if x):,} nonzero")
    (el,), pos = varints(raw, pos, 1)
    streams["extra"] = (raw[pos:pos + el], "")
    pos += el
    start = pos
    (k,), pos = varints(raw, pos, 1)
    _, pos = varints(raw, pos, 2 * k)
    streams["corrections"] = (raw[start:pos], f"{k:,} corrections")
    return len(data), streams


def zucchini(path):
    data = open(path, "rb").read()
    (elements,) = struct.unpack_from("<I", data, 24)
    pos = 28
    names = ["source skips", "destination skips", "lengths", "extra", "raw delta skips",
             "raw delta bytes", "reference deltas"]
    streams = {}

    def take():
        nonlocal pos
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 4 + length
        return data[pos - length:pos]

    for _ in range(elements):
        pos += 22  # element header
        for name in names:
            old, note = streams.get(name, (b"", ""))
            streams[name] = (old + take(), note)
        (pools,) = struct.unpack_from("<I", data, pos)
        pos += 4
        for _ in range(pools):
            tag = data[pos]
            pos += 1
            name = f"extra targets (pool {tag})"
            old, _ = streams.get(name, (b"", ""))
            streams[name] = (old + take(), "")
    count = lambda name: sum(1 for x in streams[name][0] if x < 0x80)
    for name, what in [("lengths", "equivalences"), ("raw delta skips", "raw deltas"),
                       ("reference deltas", "reference deltas")]:
        streams[name] = (streams[name][0], f"{count(name):,} {what}")
    return len(data), streams


def main():
    args = sys.argv[1:]
    dump = None
    if len(args) == 4 and args[2] == "--dump":
        dump = args.pop()
        args.pop()
    if len(args) != 2 or args[0] not in ("deltaroot", "zucchini"):
        sys.exit(__doc__)
    size, streams = (deltaroot if args[0] == "deltaroot" else zucchini)(args[1])
    if dump:
        os.makedirs(dump, exist_ok=True)
        for name, (raw, _) in streams.items():
            with open(os.path.join(dump, name.replace(" ", "-")), "wb") as f:
                f.write(raw)
    print(f"{args[1]}: {size:,} bytes")
    print("| stream | raw | zstd -19 alone | |\n|---|---:|---:|---|")
    total = 0
    for name, (raw, note) in streams.items():
        z = packed(raw)
        total += z
        print(f"| {name} | {len(raw):,} | {z:,} | {note} |")
    print(f"| all | | {total:,} | |")


if __name__ == "__main__":
    main()
