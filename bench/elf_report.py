#!/usr/bin/env python3
"""Turns bench/results/elf.tsv into the markdown table of bench/results/elf.md."""
import collections, csv, os, sys

USER = ["libcrypto", "libcrypto-1step", "libpython3.11", "python3.11", "postgres", "libc",
        "libsystemd-shared", "git", "libcurl", "libnode"]
TOOLS = ["deltaroot", "deltaroot-elf", "zucchini+zstd", "bsdiff", "qbsdiff", "xdelta3", "zstd"]

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = collections.defaultdict(dict)
for r in rows:
    by[r["pair"]][r["tool"]] = r
pairs = [p for p in by]
kb = lambda n: f"{int(n)/1000:,.1f}"

print("# ELF benchmark\n")
print(f"Real ELF pairs from the corpus, one run on this machine ({os.cpu_count()} cores). Patch sizes in kB;")
print("every patch was applied back and compared with the new file. `deltaroot` is what the publisher")
print("sends (the smallest of its methods), `deltaroot-elf` the ELF-aware method alone.\n")
print("| pair | new size | " + " | ".join(TOOLS) + " | dr / zucchini | dr / bsdiff |")
print("|---|---:|" + "---:|" * len(TOOLS) + "---:|---:|")
for p in pairs:
    t = by[p]
    cells = [kb(t[x]["patch"]) if x in t else "–" for x in TOOLS]
    dr = int(t["deltaroot"]["patch"])
    rz = f"{dr/int(t['zucchini+zstd']['patch']):.3f}" if "zucchini+zstd" in t else "–"
    rb = f"{dr/int(t['bsdiff']['patch']):.3f}" if "bsdiff" in t else "–"
    print(f"| {p} | {kb(t['deltaroot']['new'])} | " + " | ".join(cells) + f" | {rz} | {rb} |")

def total(group, tool):
    return sum(int(by[p][tool]["patch"]) for p in group if tool in by[p])

user = [p for p in USER if p in by]
mods = [p for p in by if p.startswith("ko-")]
print("\n## Targets\n")
print("| set | deltaroot | zucchini+zstd | C bsdiff | qbsdiff | ratio | target |")
print("|---|---:|---:|---:|---:|---:|---|")
if user:
    d, z, b = total(user, "deltaroot"), total(user, "zucchini+zstd"), total(user, "bsdiff")
    print(f"| {len(user)} x86-64 user-space pairs | {kb(d)} | {kb(z)} | {kb(b)} | | {d/z:.3f} of Zucchini | <= 0.9 |")
    print(f"| | | | | | {d/b:.3f} of C bsdiff | <= 0.6 |")
    worse = [p for p in user if int(by[p]["deltaroot"]["patch"]) > int(by[p]["bsdiff"]["patch"])]
    print(f"| pairs worse than C bsdiff | {len(worse)} {' '.join(worse)} | | | | | 0 |")
if mods:
    d, b, q = total(mods, "deltaroot"), total(mods, "bsdiff"), total(mods, "qbsdiff")
    print(f"| {len(mods)} kernel modules | {kb(d)} | {kb(total(mods, 'zucchini+zstd'))} | {kb(b)} | {kb(q)} | {d/min(b, q):.3f} of the better bsdiff | <= 0.95 |")

print("\n## Time and memory\n")
print("Generation and apply wall time (s) and peak RSS (MiB), each the median of deltaroot's and")
print("Zucchini's runs, taken in turns (`ELF_BENCH_REPS`, 3 by default); ratios are deltaroot over Zucchini+zstd.")
print("deltaroot's patch is applied by `deltaroot-apply` (the device's stand-alone tool) and by")
print("`deltaroot apply` (the publisher's CLI, whose process is larger: same decoder, same heap).\n")
print("| pair | MB | dr gen s | zucc gen s | gen ratio | dr gen MiB | zucc gen MiB | dr MB/s | deltaroot-apply MiB | deltaroot apply MiB | zucc apply MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
mib = lambda kib: f"{int(kib)/1024:.1f}"
for p in pairs:
    t = by[p]
    d = t["deltaroot"]
    dev = t.get("deltaroot-apply")
    z = t.get("zucchini+zstd")
    mb = int(d["new"]) / 1e6
    gs = float(d["gen_s"])
    zr = f"{gs/float(z['gen_s']):.2f}" if z and float(z["gen_s"]) > 0 else "–"
    print(f"| {p} | {mb:.1f} | {gs:.2f} | {z['gen_s'] if z else '–'} | {zr} | {mib(d['gen_kib'])} | "
          f"{mib(z['gen_kib']) if z else '–'} | {mb/max(gs, 0.01):.2f} | {mib(dev['apply_kib']) if dev else '–'} | {mib(d['apply_kib'])} | "
          f"{mib(z['apply_kib']) if z else '–'} |")

# The target: no worse than Zucchini on each of the issue's pairs (the user-space ones and the
# modules), in generation time, generation peak and apply peak.
issue = [p for p in user + mods if "zucchini+zstd" in by[p]]
if issue:
    print(f"\ndeltaroot no worse than Zucchini+zstd on the {len(issue)} user-space and module pairs:")
    for label, tool, key in [("generation time", "deltaroot", "gen_s"),
                             ("generation peak RSS", "deltaroot", "gen_kib"),
                             ("apply peak RSS, `deltaroot-apply`", "deltaroot-apply", "apply_kib"),
                             ("apply peak RSS, `deltaroot apply`", "deltaroot", "apply_kib")]:
        if not all(tool in by[p] for p in issue):
            continue
        worse = [p for p in issue
                 if float(by[p][tool][key]) > float(by[p]["zucchini+zstd"][key])]
        print(f"- {label}: {len(issue) - len(worse)} of {len(issue)}"
              + (f" (worse: {', '.join(worse)})" if worse else ""))
