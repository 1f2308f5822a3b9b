//! The wire format, defined once: entry paths, content addresses, manifests and their
//! signatures, delta containers, download plans and API bodies. The publisher and the
//! server import it from here. `docs/FORMAT.md` specifies every byte.

pub mod api;
pub mod channel;
pub mod container;
pub mod hash;
pub mod manifest;
pub mod pack;
pub mod path;
pub mod plan;
pub mod sign;
pub mod wire;

pub use channel::{Downgrade, SignedDowngrade};
pub use container::{apply_delta, encode_delta, DeltaHeader, Method};
pub use hash::{delta_path, object_path, pack_path, Hash};
pub use manifest::{check_name, Entry, Kind, Manifest, Meta, Xattrs};
pub use pack::{EntryKind, PackEntry, PackReader, PackWriter};
pub use path::{escape_bytes, EntryPath, PathError};
pub use plan::{attach_packs, compute_plan, Fetch, PackIndex, PackRef, Plan, PlanItem};
pub use sign::{PublicKey, SecretKey, VerifiedManifest};
