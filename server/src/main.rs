//! `deltaroot-server`: the release server. All logic lives in the library.

/// mimalloc: every request allocates and frees small buffers on two worker threads, where
/// glibc's malloc took ~10 % of the server's time under the load benchmark.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    deltaroot_server::cli::main()
}
