//! Link settings of the `deltaroot` binary.

fn main() {
    // A position-dependent executable: the dynamic loader has no relocations to apply to the
    // binary's own pointer tables (~150 KB of pages copied and written at every start, and
    // ~250 KB of relocation entries read), which is a large share of what a small
    // `deltaroot apply` touches (corpus `ko-e1000e`: 4.6 MiB peak instead of 4.8). The
    // binary's code is then not placed at a random address; the libraries still are.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=deltaroot=-no-pie");
    }
}
