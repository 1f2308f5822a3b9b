#!/usr/bin/env python3
"""Turns bench/results/elf.tsv into the markdown table of bench/results/elf.md.

    elf_report.py TSV [amd64|arm64|big] [RUNS]

RUNS is how many times deltaroot and Zucchini ran on each pair (`ELF_BENCH_REPS`), for the text.

With arm64 (the AArch64 pairs of bench/corpus-pinned.sh, in elf-arm64.tsv) the targets are the
AArch64 ones, each marked met or missed, and the pairs are set beside their x86-64 builds when
elf.tsv is found next to the TSV. With big (the browser-sized pairs of the same script, in
elf-big.tsv) they are the browser-sized ones, against Zucchini alone."""
import collections, csv, os, sys

USER = ["libcrypto", "libcrypto-1step", "libpython3.11", "python3.11", "postgres", "libc",
        "libsystemd-shared", "git", "libcurl", "libnode"]
TOOLS = ["deltaroot", "deltaroot-elf", "zucchini+zstd", "bsdiff", "qbsdiff", "xdelta3", "zstd"]

ARCH = sys.argv[2] if len(sys.argv) > 2 else "amd64"
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
# AArch64 targets: the user-space pairs' total against C bsdiff and against Zucchini+zstd, and
# the number of pairs whose patch is larger than Zucchini's.
ARM64_VS_BSDIFF, ARM64_VS_ZUCCHINI = 0.5, 0.8
# Browser-sized targets: the pairs' total against Zucchini+zstd; generation time, generation
# peak and apply peak no larger than Zucchini's on each pair.
BIG_VS_ZUCCHINI = 0.8

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = collections.defaultdict(dict)
for r in rows:
    by[r["pair"]][r["tool"]] = r
pairs = [p for p in by]
kb = lambda n: f"{int(n)/1000:,.1f}"

if ARCH == "arm64":
    print("# ELF benchmark, AArch64\n")
    print("The programs and libraries of the x86-64 pairs, from Debian 12's arm64 packages at the same")
    print("versions (pinned in `bench/corpus-pinned.sh`), measured as `bench/elf.sh` measures the x86-64 ones.")
elif ARCH == "big":
    print("# ELF benchmark, browser-sized binaries\n")
    print("Chromium's executable and Firefox ESR's libxul.so from Debian 12's release to its security")
    print("update (pinned in `bench/corpus-pinned.sh`), against Zucchini: C bsdiff and qbsdiff need over")
    print("5 GiB on such pairs, and the other peers add a quarter of an hour each.")
else:
    print("# ELF benchmark\n")
print(("" if ARCH in ("arm64", "big") else "Real ELF pairs from the corpus, ")
      + f"{'O' if ARCH in ('arm64', 'big') else 'o'}ne run on this machine ({os.cpu_count()} cores). Patch sizes in kB;")
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
if ARCH == "big":
    big = [p for p in pairs if "zucchini+zstd" in by[p]]
    d, z = total(big, "deltaroot"), total(big, "zucchini+zstd")
    print("| set | deltaroot | zucchini+zstd | ratio | target | |")
    print("|---|---:|---:|---:|---|---|")
    if big:
        verdict = "met" if d / z <= BIG_VS_ZUCCHINI else f"**missed** by {d / z - BIG_VS_ZUCCHINI:.3f} ({kb(d - BIG_VS_ZUCCHINI * z)} kB over)"
        print(f"| {len(big)} browser-sized pairs | {kb(d)} | {kb(z)} | {d/z:.3f} of Zucchini | <= {BIG_VS_ZUCCHINI} | {verdict} |")
    for label, tool, key in [("generation time", "deltaroot", "gen_s"),
                             ("generation peak RSS", "deltaroot", "gen_kib"),
                             ("apply peak RSS, `deltaroot-apply`", "deltaroot-apply", "apply_kib")]:
        worse = [p for p in big if tool in by[p] and float(by[p][tool][key]) > float(by[p]["zucchini+zstd"][key])]
        print(f"| {label} <= Zucchini's | {len(big) - len(worse)} of {len(big)} pairs | | | all | "
              + ("met" if not worse else f"**missed**: {', '.join(worse)}") + " |")
elif user and ARCH == "arm64":
    d, z, b = total(user, "deltaroot"), total(user, "zucchini+zstd"), total(user, "bsdiff")
    nz = [p for p in user if "zucchini+zstd" in by[p]]
    above = [p for p in nz if int(by[p]["deltaroot"]["patch"]) > int(by[p]["zucchini+zstd"]["patch"])]
    def verdict(ratio, target, base):  # met, or missed by how much (ratio and kB over the target)
        return "met" if ratio <= target else f"**missed** by {ratio - target:.3f} ({kb(d - target * base)} kB over)"
    print("| set | deltaroot | zucchini+zstd | C bsdiff | ratio | target | |")
    print("|---|---:|---:|---:|---:|---|---|")
    print(f"| {len(user)} AArch64 user-space pairs | {kb(d)} | {kb(z)} | {kb(b)} | {d/b:.3f} of C bsdiff "
          f"| <= {ARM64_VS_BSDIFF} | {verdict(d/b, ARM64_VS_BSDIFF, b)} |")
    if len(nz) == len(user):
        print(f"| | | | | {d/z:.3f} of Zucchini | <= {ARM64_VS_ZUCCHINI} | {verdict(d/z, ARM64_VS_ZUCCHINI, z)} |")
    else:
        print(f"| | | | | Zucchini gave no patch for {len(user) - len(nz)} pairs | <= {ARM64_VS_ZUCCHINI} | – |")
    print(f"| pairs above Zucchini | {len(above)} {' '.join(above)} | | | | 0 | {'met' if not above else '**missed**'} |")
    worse = [p for p in user if int(by[p]["deltaroot"]["patch"]) > int(by[p]["bsdiff"]["patch"])]
    print(f"| pairs above C bsdiff | {len(worse)} {' '.join(worse)} | | | | | |")
    if above:
        print("\nOver Zucchini+zstd (kB): " + ", ".join(
            f"{p} +{kb(int(by[p]['deltaroot']['patch']) - int(by[p]['zucchini+zstd']['patch']))}" for p in above) + ".")
    x86 = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "elf.tsv")
    if os.path.exists(x86):
        xby = collections.defaultdict(dict)
        for r in csv.DictReader(open(x86), delimiter="\t"):
            xby[r["pair"]][r["tool"]] = r
        ratio = lambda t, a, b: (f"{int(t[a]['patch'])/int(t[b]['patch']):.3f}"
                                 if a in t and b in t else "–")
        print("\n## Beside x86-64\n")
        print("The same pairs built for x86-64 (`bench/results/elf.tsv`): deltaroot's patch over Zucchini+zstd's")
        print("and over C bsdiff's on each architecture.\n")
        print("| pair | AArch64 dr / zucchini | x86-64 dr / zucchini | AArch64 dr / bsdiff | x86-64 dr / bsdiff |")
        print("|---|---:|---:|---:|---:|")
        for p in user:
            a, x = by[p], xby.get(p, {})
            print(f"| {p} | {ratio(a, 'deltaroot', 'zucchini+zstd')} | {ratio(x, 'deltaroot', 'zucchini+zstd')} | "
                  f"{ratio(a, 'deltaroot', 'bsdiff')} | {ratio(x, 'deltaroot', 'bsdiff')} |")
elif user:
    print("| set | deltaroot | zucchini+zstd | C bsdiff | qbsdiff | ratio | target |")
    print("|---|---:|---:|---:|---:|---:|---|")
    d, z, b = total(user, "deltaroot"), total(user, "zucchini+zstd"), total(user, "bsdiff")
    print(f"| {len(user)} x86-64 user-space pairs | {kb(d)} | {kb(z)} | {kb(b)} | | {d/z:.3f} of Zucchini | <= 0.5 {'met' if d / z <= 0.5 else '**missed**'} |")
    print(f"| | | | | | {d/b:.3f} of C bsdiff | <= 0.6 |")
    worse = [p for p in user if int(by[p]["deltaroot"]["patch"]) > int(by[p]["bsdiff"]["patch"])]
    print(f"| pairs worse than C bsdiff | {len(worse)} {' '.join(worse)} | | | | | 0 |")
    above = [p for p in user if int(by[p]["deltaroot"]["patch"]) > int(by[p]["zucchini+zstd"]["patch"])]
    print(f"| pairs above Zucchini+zstd | {len(above)} {' '.join(above)} | | | | | 0 {'met' if not above else '**missed**'} |")
if mods:
    d, b, q = total(mods, "deltaroot"), total(mods, "bsdiff"), total(mods, "qbsdiff")
    print(f"| {len(mods)} kernel modules | {kb(d)} | {kb(total(mods, 'zucchini+zstd'))} | {kb(b)} | {kb(q)} | {d/min(b, q):.3f} of the better bsdiff | <= 0.5 {'met' if d / min(b, q) <= 0.5 else '**missed**'} |")

print("\n## Time and memory\n")
if RUNS == 1:
    print("Generation and apply wall time (s) and peak RSS (MiB) of one run of deltaroot and one of")
    print("Zucchini (`ELF_BENCH_REPS=1`); ratios are deltaroot over Zucchini+zstd.")
else:
    print("Generation and apply wall time (s) and peak RSS (MiB), each the median of deltaroot's and")
    print(f"Zucchini's {RUNS} runs, taken in turns (`ELF_BENCH_REPS`); ratios are deltaroot over Zucchini+zstd.")
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
    print(f"\ndeltaroot no worse than Zucchini+zstd on the {len(issue)} user-space" + (" and module" if mods else "") + " pairs:")
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

# Chart beside the TSV (elf.svg, elf-arm64.svg, elf-big.svg): each pair's patch by tool, kB.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import barchart  # noqa: E402

COLOURS = {"deltaroot": barchart.DELTAROOT, "zucchini+zstd": barchart.PEER, "bsdiff": barchart.PEER_LIGHT,
           "qbsdiff": barchart.PEER_LIGHT, "xdelta3": barchart.REFERENCE, "zstd": barchart.REFERENCE}
panels = [(f"{p} ({int(by[p]['deltaroot']['new']) / 1e6:.1f} MB)",
           [(x, int(by[p][x]["patch"]), COLOURS[x]) for x in COLOURS if x in by[p]]) for p in pairs]
with open(os.path.splitext(sys.argv[1])[0] + ".svg", "w") as f:
    f.write(barchart.svg({"arm64": "AArch64 ELF pairs: patch, kB", "big": "Browser-sized ELF pairs: patch, kB"}
                         .get(ARCH, "x86-64 ELF pairs: patch, kB"), panels, lambda b: f"{b / 1000:,.1f} kB"))
