"""Horizontal bar charts as SVG, for the benchmarks' reports (trees_report.py, elf_report.py,
load.sh): one panel per group, each bar labelled with its value.

    svg(title, [(panel title, [(label, value, colour), ...]), ...], fmt) -> str

`fmt` turns a value into the text beside its bar. Each panel is scaled to its own largest bar."""

WIDTH, ROW, LEFT, RIGHT = 760, 22, 190, 120

# The colours the reports share: deltaroot, its variants, the peers, the reference.
DELTAROOT, DELTAROOT_LIGHT, DELTAROOT_PALE = "#2b6cb0", "#5a8fd0", "#90b4e0"
PEER, PEER_LIGHT, REFERENCE = "#d9822b", "#e8b07a", "#bbbbbb"


def svg(title, panels, fmt):
    height = sum(40 + ROW * len(items) for _, items in panels) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>']
    y = 40
    for name, items in panels:
        top = max((v for _, v, _ in items), default=0) or 1
        scale = (WIDTH - LEFT - RIGHT) / top
        out.append(f'<text x="10" y="{y + 14}" font-weight="bold">{name}</text>')
        y += 22
        for label, value, colour in items:
            w = max(1, value * scale)
            out.append(f'<text x="{LEFT - 6}" y="{y + 14}" text-anchor="end">{label}</text>')
            out.append(f'<rect x="{LEFT}" y="{y + 2}" width="{w:.1f}" height="{ROW - 6}" fill="{colour}"/>')
            out.append(f'<text x="{LEFT + w + 4:.1f}" y="{y + 14}">{fmt(value)}</text>')
            y += ROW
        y += 18
    out.append("</svg>")
    return "\n".join(out)
