//! deltaroot's wire format, defined once, and every decoder: entry paths, content
//! addresses, manifests and their signatures, delta containers and the methods that decode
//! them (ELF-aware, gzip, xz, bsdiff, zstd), packs, download plans and API bodies. The
//! publisher, the server and the device import it from here; `docs/FORMAT.md` specifies
//! every byte.
//!
//! It reads and writes bytes and files only: no HTTP, no async runtime, no command line
//! (`cargo tree -p deltaroot-format` shows none; `.ci/deps` checks it).
//!
//! - [`tree`]: reading a tree on disk into manifest entries (the publisher's scan, the
//!   device's verification).
//! - [`apply`]: one delta applied to one file, written beside the output and renamed over it.
//! - [`fsio`]: the one way every deltaroot writer puts a file in place (exclusive temporary
//!   file, synced, renamed, directory synced).
//! - [`name`]: validated [`Name`]s (products, channels, versions) and [`DeviceId`]s.

pub mod answer;
pub mod api;
pub mod apply;
pub mod bitcode;
pub mod bounds;
pub mod channel;
pub mod checkin;
pub mod container;
mod decoders;
pub mod elf;
pub mod error;
pub mod fsio;
pub mod gnu_deflate;
pub mod gzip;
pub mod hash;
pub mod manifest;
pub mod manifest_delta;
pub mod method;
pub mod name;
pub mod pack;
pub mod path;
pub mod plan;
pub mod plan_binary;
pub mod rotation;
pub mod sign;
pub mod statement;
pub mod streamed;
pub mod tree;
pub mod units;
pub mod wire;
pub mod xz;

pub use answer::{Answer, Delegation, Freshness, Question, TrustedAnswer};
pub use channel::{Downgrade, SignedDowngrade};
pub use container::{apply_delta, encode_delta, DeltaHeader, Method};
pub use error::{Error, Result};
pub use hash::{delta_path, object_path, pack_path, Hash};
pub use manifest::{check_name, Entry, Kind, Manifest, Meta, Xattrs};
pub use name::{DeviceId, Name};
pub use pack::{EntryKind, PackEntry, PackReader, PackWriter};
pub use path::{escape_bytes, EntryPath, PathError};
pub use plan::{
    attach_packs, compute_plan, offer_objects, Fetch, PackIndex, PackRef, Plan, PlanItem,
};
pub use rotation::{Keyring, Rotation, RotationOffer};
pub use sign::{PublicKey, SecretKey, VerifiedManifest};
pub use units::{human_bytes, parse_bytes};
