#!/usr/bin/env python3
"""Turns bench/trees.sh's values (tree, key, value per line) into a markdown table and an SVG
chart. Ratios are against OSTree's static delta measured in the same run."""
import os
import sys
from collections import defaultdict

# Download counted whole (contents and metadata) against OSTree's static delta.
TARGETS = {"small": 0.35, "kernel": 0.45}
GEN_TARGET, APPLY_TARGET, PEAK_TARGET_MIB = 0.5, 1.0, 1024

src, md_path, svg_path = sys.argv[1:4]
v = defaultdict(dict)
for line in open(src):
    tree, key, value = line.rstrip("\n").split("\t")
    v[tree][key] = value


def t(tree, name):
    """(seconds, MiB) of a timed step."""
    s, kib = v[tree][f"time_{name}"].split()
    return float(s), int(kib) / 1024


def meta(tree, keys):
    """(manifest, plan, check) bytes a device fetched during the update of run `keys`."""
    return tuple(map(int, v[tree].get(f"{keys}meta", "0 0 0").split()))


def whole(tree, keys):
    """Every byte a device fetched during the update of run `keys`: contents and metadata."""
    return int(v[tree][f"{keys}bytes"]) + sum(meta(tree, keys))


def figures(tree):
    """Bytes and (seconds, MiB) of every step of one tree."""
    d = v[tree]
    f = {k: int(d[k]) for k in ("image_bytes", "ostree_bytes", "full_bytes", "dr_promised")}
    f["dr_payload"] = int(d["dr_bytes"])
    f["dr_bytes"] = whole(tree, "dr_")
    for step in ("ostree-commit-b", "ostree-delta", "ostree-apply", "dr-publish", "dr-apply", "full"):
        f[step] = t(tree, step)
    f["ostree-gen"] = f["ostree-commit-b"][0] + f["ostree-delta"][0]
    return f


mb = lambda b: f"{b / 1e6:,.2f}"
out = []
p = out.append
p("# deltaroot and OSTree on real trees\n")
p(f"One run of `bench/trees.sh` on this machine ({os.cpu_count()} cores). Download: bytes a device on A")
p("fetches to reach B. deltaroot: counted by the server as it served them, every byte of the update:")
p("objects, deltas and packs, and the metadata (the check answer, the manifest, sent as a delta from")
p("the one the device runs, its signature, and the plan, in binary form). Generation: OSTree commits B")
p("(its objects, zlib) and generates the static delta; deltaroot publishes B from A (objects for")
p("fresh installs at zstd -19 and every delta). Apply: OSTree `static-delta apply-offline` then")
p("`checkout` of B; deltaroot `deltaroot-agent update` (download from loopback, verify, build the")
p("staging tree, switch), each on a device freshly set up at A in a folder of its own, nothing deleted")
p("in the six minutes before (on this ext4 without a journal, an inode freed within a minute, six while")
p("its inode table block is dirty, is skipped by every file creation that scans past it: a condition no")
p("device's update meets); an apply's time is the median of its runs, listed under each tree. Peak")
p("memory is the peak RSS of the step's largest process.")
p("deltaroot runs with the agent's default policy, `--prefer auto`: where a plan offers the whole object")
p("beside a delta slow to rebuild (a compressed kernel's `xz` delta), it takes the object when its extra")
p("bytes download faster than the delta rebuilds, on the speeds the device measured (here: loopback).")
p("deltaroot, `--prefer bytes`: the same publish and apply on a server of its own, the device taking")
p("the fewest bytes: what a fleet on a metered or slow link gets.")
thp = "glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", "")
p("Every tool ran with malloc asking for transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`,"
  " as `deploy/deltaroot-agent.service` sets it).\n" if thp else
  "malloc ran with its defaults (`THP_MALLOC=0`).\n")
trees = [x for x in ("small", "kernel") if x in v]
for tree in trees:
    d, f = v[tree], figures(tree)
    image, ost, dr = f["image_bytes"], f["ostree_bytes"], f["dr_bytes"]
    (oc_s, oc_m), (og_s, og_m), (oa_s, oa_m) = f["ostree-commit-b"], f["ostree-delta"], f["ostree-apply"]
    (dg_s, dg_m), (da_s, da_m), (f_s, _) = f["dr-publish"], f["dr-apply"], f["full"]
    p(f"## trees/{tree} ({mb(image)} MB of files in B)\n")
    p("| what | download MB | % of image | vs OSTree | generation s | generation peak MiB | apply s | apply peak MiB |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|")
    row = lambda name, b, gs="", gm="", a="", am="": p(
        f"| {name} | {mb(b)} | {100 * b / image:.2f}% | {b / ost:.3f} | {gs} | {gm} | {a} | {am} |"
    )
    row("full image (tar, zstd -19)", f["full_bytes"], f"{f_s:.1f}")
    row("OSTree static delta", ost, f"{oc_s + og_s:.1f} ({oc_s:.1f} commit + {og_s:.1f} delta)",
        f"{max(oc_m, og_m):.0f}", f"{oa_s:.1f}", f"{oa_m:.0f}")
    row("**deltaroot**", dr, f"**{dg_s:.1f}**", f"**{dg_m:.0f}**", f"**{da_s:.1f}**", f"**{da_m:.0f}**")
    if "bytes_bytes" in d:
        (sg_s, sg_m), (sa_s, sa_m) = t(tree, "dr-bytes-publish"), t(tree, "dr-bytes-apply")
        row("deltaroot, `--prefer bytes`", whole(tree, "bytes_"), f"{sg_s:.1f}", f"{sg_m:.0f}",
            f"{sa_s:.1f}", f"{sa_m:.0f}")
    if "dr_unpacked" in d:
        unpacked, packs, packed = map(int, d["dr_unpacked"].split())
        row(f"deltaroot, the same downloads unpacked (without its {packs} packs of {packed} files)",
            unpacked + sum(meta(tree, "dr_")))
    if "dr_meta_whole" in d:
        mw, pj = map(int, d["dr_meta_whole"].split())
        # An agent that asks for neither also knows no policy: it takes the fewest bytes.
        payload = int(d.get("bytes_bytes", d["dr_bytes"]))
        row("deltaroot, the manifest whole and the JSON plan (an agent that asks for neither,"
            " the fewest bytes)", payload + mw + pj + meta(tree, "dr_")[2])
    for key in sorted(k for k in d if k.startswith("only_")):
        m = key[5:]
        s, mem = t(tree, f"only-{m}")
        label = ("whole files only (zstd -19 objects)" if m == "zstd" else f"deltaroot, `{m}` alone") + ", contents only"
        row(label, int(d[key]), f"{s:.1f}*", f"{mem:.0f}*")
    p("")
    p("\\* one-method runs reuse the stored objects, so their times cover the deltas alone.\n")
    reps = [(k[5:], d[k]) for k in sorted(d) if k.startswith("reps_")]
    if reps:
        p("Apply runs (seconds; the median is in the table): "
          + "; ".join(f"{name}: {runs.replace(' ', ', ')}" for name, runs in reps) + ".\n")
    chosen = {k[7:]: d[k].split() for k in d if k.startswith("chosen_")}
    if chosen:
        p("What the publisher chose (the cheapest method per content, the fewest bytes):\n")
        p("| method | contents | MB |")
        p("|---|---:|---:|")
        for m in sorted(chosen):
            p(f"| {m} | {chosen[m][0]} | {mb(int(chosen[m][1]))} |")
        p("")
    if "dr_meta" in d:
        (mm, mp, mc), dl = meta(tree, "dr_"), f["dr_bytes"]
        p("What the device fetched besides contents (bytes):\n")
        p("| metadata | fetched | share of the download | asked for whole |")
        p("|---|---:|---:|---:|")
        mw, pj = map(int, d.get("dr_meta_whole", "0 0").split())
        p(f"| manifest (a delta from the running one's) and signature | {mm:,} | {100 * mm / dl:.1f}% | {mw:,} |")
        p(f"| plan (binary) | {mp:,} | {100 * mp / dl:.1f}% | {pj:,} (JSON) |")
        p(f"| check answer | {mc:,} | {100 * mc / dl:.2f}% | {mc:,} |")
        p(f"| **all metadata** | **{mm + mp + mc:,}** | **{100 * (mm + mp + mc) / dl:.1f}%** | {mw + pj + mc:,} |")
        p("")
    p(f"Contents served / promised by the publisher: {f['dr_payload'] / f['dr_promised']:.4f}"
      + (f"; with `--prefer bytes`, {int(d['bytes_bytes']) / int(d['bytes_promised']):.4f}"
         if "bytes_bytes" in d else "") + ".\n")

p("## Targets\n")
p("| tree | download vs OSTree | target | generation vs OSTree | target | apply vs OSTree | target | publish peak MiB | target |")
p("|---|---:|---|---:|---|---:|---|---:|---|")
for tree in trees:
    f = figures(tree)
    runs = [(tree, f["dr_bytes"], "dr-publish", "dr-apply")]
    if "bytes_bytes" in v[tree]:
        runs.append((f"{tree}, `--prefer bytes`", whole(tree, "bytes_"), "dr-bytes-publish", "dr-bytes-apply"))
    for name, b, publish, apply in runs:
        (dg_s, dg_m), da_s, oa_s = t(tree, publish), t(tree, apply)[0], f["ostree-apply"][0]
        p(f"| {name} | {b / f['ostree_bytes']:.3f} | <= {TARGETS[tree]} | {dg_s / f['ostree-gen']:.2f} | <= {GEN_TARGET} "
          f"| {da_s / oa_s:.2f} | <= {APPLY_TARGET} | {dg_m:.0f} | <= {PEAK_TARGET_MIB} |")
p("")
open(md_path, "w").write("\n".join(out))

# Chart: download MB per approach, one panel per tree.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import barchart  # noqa: E402

bars = []
for tree in trees:
    d = v[tree]
    items = [("full image", int(d["full_bytes"]), barchart.REFERENCE),
             ("OSTree", int(d["ostree_bytes"]), barchart.PEER),
             ("deltaroot", whole(tree, "dr_"), barchart.DELTAROOT)]
    if "bytes_bytes" in d:
        items.append(("deltaroot, bytes", whole(tree, "bytes_"), barchart.DELTAROOT_LIGHT))
    for key in sorted(k for k in d if k.startswith("only_") and k != "only_zstd"):
        items.append((f"{key[5:]} alone", int(d[key]), barchart.DELTAROOT_PALE))
    bars.append((f"trees/{tree}", items))
open(svg_path, "w").write(barchart.svg("Download from A to B, MB", bars, lambda b: f"{b / 1e6:.2f} MB"))
