//! Writes a fuzz seed for the ELF decoder from a real pair:
//! `fuzz_seed OLD NEW OUT` -> `[u32 LE len(OLD)][OLD][ELF payload, uncompressed]`.
fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [old, new, out] = a.as_slice() else {
        anyhow::bail!("usage: fuzz_seed OLD NEW OUT");
    };
    let (old, new) = (std::fs::read(old)?, std::fs::read(new)?);
    let payload = deltaroot_publisher::elf::encode(&old, &new, &Default::default())?
        .ok_or_else(|| anyhow::anyhow!("the ELF method does not apply to these files"))?;
    let mut seed = (old.len() as u32).to_le_bytes().to_vec();
    seed.extend_from_slice(&old);
    seed.extend_from_slice(&payload);
    std::fs::write(out, seed)?;
    Ok(())
}
