//! Writes a fuzz seed from a real pair of files:
//! - `fuzz_seed OLD NEW OUT`: for the ELF decoder, `[u32 LE len(OLD)][OLD][ELF payload]`;
//! - `fuzz_seed --delta OLD NEW OUT`: for `apply_delta`, `[u32 LE len(OLD)][OLD][container]`
//!   with the smallest delta the engine makes (gzip, xz and bitcode pairs seed those methods).
fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (delta, rest) = match a.split_first() {
        Some((flag, rest)) if flag == "--delta" => (true, rest),
        _ => (false, a.as_slice()),
    };
    let [old, new, out] = rest else {
        anyhow::bail!("usage: fuzz_seed [--delta] OLD NEW OUT");
    };
    let (old, new) = (std::fs::read(old)?, std::fs::read(new)?);
    let payload = if delta {
        let opts = deltaroot_engine::EngineOptions::default();
        deltaroot_engine::candidates(&old, &new, &opts)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no delta method applies to these files"))?
            .bytes
    } else {
        deltaroot_engine::elf::encode(&old, &new)?
            .ok_or_else(|| anyhow::anyhow!("the ELF method does not apply to these files"))?
    };
    let mut seed = (old.len() as u32).to_le_bytes().to_vec();
    seed.extend_from_slice(&old);
    seed.extend_from_slice(&payload);
    std::fs::write(out, seed)?;
    Ok(())
}
