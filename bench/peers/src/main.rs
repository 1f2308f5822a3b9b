//! `peers TOOL OLD NEW|PATCH OUT`: the benchmark's peer tools, each writing one file.
//!
//! - `zucchini-gen OLD NEW PATCH` / `zucchini-apply OLD PATCH NEW`
//! - `qbsdiff OLD NEW PATCH` / `qbspatch OLD PATCH NEW`

use std::io::Cursor;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [tool, x, y, out] = a.as_slice() else {
        eprintln!("usage: peers zucchini-gen|zucchini-apply|qbsdiff|qbspatch A B OUT");
        std::process::exit(2);
    };
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("reading {p}: {e}"));
    let (x, y) = (read(x), read(y));
    let result = match tool.as_str() {
        "zucchini-gen" => zucchini::generate(&x, &y).map_err(|e| e.to_string()),
        "zucchini-apply" => zucchini::apply(&x, &y).map_err(|e| e.to_string()),
        "qbsdiff" => {
            let mut patch = Vec::new();
            qbsdiff::Bsdiff::new(&x, &y)
                .compare(Cursor::new(&mut patch))
                .map(|_| patch)
                .map_err(|e| e.to_string())
        }
        "qbspatch" => {
            let mut new = Vec::new();
            qbsdiff::Bspatch::new(&y)
                .and_then(|p| p.apply(&x, Cursor::new(&mut new)))
                .map(|_| new)
                .map_err(|e| e.to_string())
        }
        other => Err(format!("unknown tool {other}")),
    };
    match result {
        Ok(bytes) => std::fs::write(out, bytes).unwrap_or_else(|e| panic!("writing {out}: {e}")),
        Err(e) => {
            eprintln!("{tool}: {e}");
            std::process::exit(1);
        }
    }
}
