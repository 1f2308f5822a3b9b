//! `deltaroot-server`: the release server. All logic lives in the library.

fn main() -> anyhow::Result<()> {
    deltaroot_server::cli::main()
}
