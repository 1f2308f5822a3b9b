//! The `deltaroot` command as a release engineer runs it, one binary: the command's own
//! behaviour (`cli`: tar input, a static release folder a device installs from, single-file
//! `diff`/`apply`, help, progress), the checks `publish` makes before writing anything
//! (`checks`), the ELF method on real ELF pairs (`elf`) and compressed files (`compressed`:
//! gzip, xz, `--skip-method`), and what is read of the input trees (`input`: `--exclude`,
//! `--strip-components`) and `--shared` (`shared`). The helpers and fixtures are in `common`.

mod checks;
mod cli;
mod common;
mod compressed;
mod elf;
mod input;
mod shared;
